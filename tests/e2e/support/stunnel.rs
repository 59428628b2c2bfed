//! stunnel in client mode: the TLS side of a SIPp phone. Debian's SIPp is built without TLS, so
//! a phone speaking SIP over TLS is SIPp over TCP to a local stunnel, which does the TLS
//! handshake with sipguard (verifying its certificate against the test CA and its name) and
//! carries the bytes unchanged. stunnel connects from the phone's own address, so sipguard sees
//! the phone's address as the source.

use super::process::Guarded;
use super::{free_tcp_addr, poll_until, tcp_port_listening};
use anyhow::{bail, Context};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long stunnel gets to open its listening port.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running stunnel client, stopped on drop.
#[derive(Debug)]
pub struct Stunnel {
    accept: SocketAddr,
    log: PathBuf,
    _process: Guarded,
}

impl Stunnel {
    /// Starts stunnel listening on `ip` (a free port) and tunnelling each connection over TLS to
    /// `server` from `ip`, trusting only the CA certificate in `ca_pem` for `server_name`. Its
    /// config and log go to `dir`.
    pub fn client(
        dir: &Path,
        ip: Ipv4Addr,
        server: SocketAddr,
        ca_pem: &str,
        server_name: &str,
    ) -> anyhow::Result<Self> {
        let accept = free_tcp_addr(ip)?;
        let stem = format!("stunnel-{}-{}", ip, accept.port());
        let ca = dir.join(format!("{stem}-ca.pem"));
        std::fs::write(&ca, ca_pem)?;
        let log = dir.join(format!("{stem}.log"));
        let config = dir.join(format!("{stem}.conf"));
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\ndebug = info\noutput = {log}\n\n[sip]\nclient = yes\n\
                 accept = {accept}\nconnect = {server}\nlocal = {ip}\nCAfile = {ca}\n\
                 verifyChain = yes\ncheckHost = {server_name}\nsslVersionMin = TLSv1.2\n",
                log = log.display(),
                ca = ca.display(),
            ),
        )?;
        let mut command = Command::new("stunnel4");
        command
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut process = Guarded::spawn("stunnel4", command)?;
        poll_until("stunnel to listen", READY_TIMEOUT, || {
            let exited = matches!(process.try_wait(), Ok(Some(_)));
            (exited || tcp_port_listening(accept)).then_some(())
        })?;
        if let Ok(Some(status)) = process.try_wait() {
            bail!(
                "stunnel exited at start ({status}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(Stunnel {
            accept,
            log,
            _process: process,
        })
    }

    /// Where SIPp connects (plain TCP).
    pub fn addr(&self) -> SocketAddr {
        self.accept
    }

    /// stunnel's log so far (handshakes, certificate checks).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log)
            .context("stunnel log")
            .unwrap_or_default()
    }
}
