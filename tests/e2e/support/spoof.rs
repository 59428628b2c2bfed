//! UDP datagrams with a forged source address and port, as a spoofer on the internet sends them,
//! made on loopback with a raw IPv4 socket (which needs root, as the suite has in CI).
//!
//! A bound socket cannot stand in: a spoofer sends from a phone's own address and port while the
//! phone (a SIPp run) holds that port, and a second socket sharing it through SO_REUSEPORT would
//! take some of the phone's answers. A raw socket binds nothing, and the spoofer never sees the
//! answers, exactly as on the internet.

use anyhow::Context;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::SocketAddrV4;

/// IPPROTO_RAW: the caller writes the IP header (IP_HDRINCL).
const IPPROTO_RAW: i32 = 255;
const IPPROTO_UDP: u8 = 17;

/// A raw socket that sends UDP datagrams from any address.
#[derive(Debug)]
pub struct Spoofer {
    socket: Socket,
}

impl Spoofer {
    /// Opens the raw socket; an error when the process may not (not root).
    pub fn new() -> anyhow::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
            .context("a raw socket for forged datagrams needs root (CAP_NET_RAW)")?;
        Ok(Spoofer { socket })
    }

    /// Sends `payload` to `to` as a UDP datagram from `from`.
    pub fn send(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> anyhow::Result<()> {
        let udp_len = u16::try_from(8 + payload.len()).context("payload too large")?;
        let total = 20 + udp_len;
        let mut packet = Vec::with_capacity(usize::from(total));
        // IPv4 header: the kernel fills in the checksum (and the id, left 0).
        packet.extend([0x45, 0]);
        packet.extend(total.to_be_bytes());
        packet.extend([0, 0, 0, 0, 64, IPPROTO_UDP, 0, 0]);
        packet.extend(from.ip().octets());
        packet.extend(to.ip().octets());
        // UDP header: checksum 0 means none, which IPv4 allows.
        packet.extend(from.port().to_be_bytes());
        packet.extend(to.port().to_be_bytes());
        packet.extend(udp_len.to_be_bytes());
        packet.extend([0, 0]);
        packet.extend_from_slice(payload);
        self.socket
            .send_to(&packet, &SockAddr::from(to))
            .with_context(|| format!("forged send from {from} to {to}"))?;
        Ok(())
    }
}
