//! Free ports and waiting on conditions, always with a deadline.

use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// How often a condition is checked while waiting for it.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Checks `condition` until it yields a value or `timeout` passes; the error names `what`.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A UDP port on `ip` that was free a moment ago: the kernel picks it for a port-0 bind, and the
/// socket is closed again so an external program (SIPp, Kamailio) can take it.
pub fn free_udp_port(ip: IpAddr) -> anyhow::Result<u16> {
    let socket =
        UdpSocket::bind(SocketAddr::new(ip, 0)).with_context(|| format!("cannot bind {ip}:0"))?;
    Ok(socket.local_addr()?.port())
}

/// A free UDP address on `ip` (see [`free_udp_port`]).
pub fn free_udp_addr(ip: Ipv4Addr) -> anyhow::Result<SocketAddr> {
    let ip = IpAddr::V4(ip);
    Ok(SocketAddr::new(ip, free_udp_port(ip)?))
}

/// Whether some process has a UDP socket bound to exactly `addr` (IPv4), read from
/// /proc/net/udp so that checking never takes the port from the program about to bind it.
pub fn udp_port_bound(addr: SocketAddr) -> bool {
    proc_net_has("/proc/net/udp", addr, None)
}

/// A TCP port on `ip` that was free a moment ago (see [`free_udp_port`]).
pub fn free_tcp_addr(ip: Ipv4Addr) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), 0))
        .with_context(|| format!("cannot bind {ip}:0"))?;
    Ok(listener.local_addr()?)
}

/// Whether some process listens on TCP at exactly `addr` (IPv4), read from /proc/net/tcp so
/// that checking does not connect to it.
pub fn tcp_port_listening(addr: SocketAddr) -> bool {
    // State 0A is LISTEN.
    proc_net_has("/proc/net/tcp", addr, Some("0A"))
}

/// Whether the socket table `table` has a line for local address `addr`, in `state` if given.
fn proc_net_has(table: &str, addr: SocketAddr, state: Option<&str>) -> bool {
    let IpAddr::V4(ip) = addr.ip() else {
        return false;
    };
    // The kernel prints the address as the native-endian value of the network-order bytes.
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    );
    std::fs::read_to_string(table)
        .map(|table| {
            table.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(1) == Some(&wanted.as_str())
                    && state.is_none_or(|state| fields.get(3) == Some(&state))
            })
        })
        .unwrap_or(false)
}
