//! A real redis-server on a free loopback port, with no persistence (`--save ''`,
//! `--appendonly no`): stopped by PID on drop, and restartable on the same port, as an outage.

use super::process::Guarded;
use super::wait::{free_tcp_addr, poll_until, tcp_port_listening};
use anyhow::{ensure, Context};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A running redis-server.
#[derive(Debug)]
pub struct Redis {
    process: Guarded,
    addr: SocketAddr,
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
        command
            .args(["--port", &addr.port().to_string()])
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
        Ok(Redis { process, addr })
    }

    /// The URL nodes are given.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
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
