//! A real redis-server on a free loopback port, with no persistence (`--save ''`,
//! `--appendonly no`): stopped by PID on drop, and restartable on the same port, as an outage.
//! Or one that speaks only TLS (`--port 0`, `--tls-port`), with a test CA's certificate.

use super::certs::Issued;
use super::process::Guarded;
use super::wait::{free_tcp_addr, poll_until, tcp_port_listening};
use anyhow::{ensure, Context};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A running redis-server.
#[derive(Debug)]
pub struct Redis {
    process: Guarded,
    addr: SocketAddr,
    /// Only TLS: `rediss://`.
    tls: bool,
}

/// The PEM files of a redis-server that speaks only TLS.
pub struct RedisTls<'a> {
    /// Its certificate chain and key.
    pub issued: &'a Issued,
    /// The CA that client certificates must chain to.
    pub client_ca: &'a Path,
    /// Whether a client must show a certificate (`--tls-auth-clients yes`).
    pub client_certificates: bool,
}

impl Redis {
    /// Starts one on a free port of 127.0.0.1.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_on(free_tcp_addr(Ipv4Addr::LOCALHOST)?)
    }

    /// Starts one on `addr` (a restart after [`Redis::stop`]: empty, as a server without
    /// persistence comes back).
    pub fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut command = Command::new("redis-server");
        command.args(["--port", &addr.port().to_string()]);
        Self::spawn(command, addr, false)
    }

    /// Starts one on a free port of 127.0.0.1 that speaks only TLS, as `tls` says.
    pub fn start_tls(tls: &RedisTls<'_>) -> anyhow::Result<Self> {
        let addr = free_tcp_addr(Ipv4Addr::LOCALHOST)?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", "0", "--tls-port", &addr.port().to_string()])
            .arg("--tls-cert-file")
            .arg(&tls.issued.certificate)
            .arg("--tls-key-file")
            .arg(&tls.issued.key)
            .arg("--tls-ca-cert-file")
            .arg(tls.client_ca)
            .args([
                "--tls-auth-clients",
                if tls.client_certificates { "yes" } else { "no" },
            ]);
        Self::spawn(command, addr, true)
    }

    fn spawn(mut command: Command, addr: SocketAddr, tls: bool) -> anyhow::Result<Self> {
        command
            .args(["--bind", &addr.ip().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process = Guarded::spawn("redis-server", command)
            .context("redis-server (scripts/install-test-deps.sh installs it)")?;
        let listening = poll_until("redis-server to listen", Duration::from_secs(10), || {
            if matches!(process.try_wait(), Ok(Some(_))) {
                return Some(false);
            }
            tcp_port_listening(addr).then_some(true)
        })?;
        ensure!(listening, "redis-server exited at start");
        Ok(Redis { process, addr, tls })
    }

    /// The URL nodes are given.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{}/", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it (SIGTERM by PID) and waits for it to be gone.
    pub fn stop(mut self) {
        self.process.stop();
    }
}
