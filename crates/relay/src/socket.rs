//! Socket creation: every socket sipguard opens is made here, with the options it needs.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Receive buffer asked for on listeners, so a burst is queued rather than lost while the
/// front loop works; the kernel caps it at `net.core.rmem_max`.
const LISTENER_RECV_BUFFER: usize = 4 << 20;

/// Binds a UDP listener. IPv6 listeners are IPv6-only, so `0.0.0.0:5060` and `[::]:5060` can be
/// bound side by side and each client keeps the address family it used. Listeners are bound
/// with SO_REUSEPORT, so the relay can open more sockets on the same address and have the kernel
/// spread clients over them by address hash, one receive loop per core (see `udp::run`).
///
/// SO_REUSEPORT would also let a second sipguard of the same user bind the same port without
/// an error and silently take half the traffic, so a fixed port is first bound plainly: if
/// anything holds it, this fails with `AddrInUse` as a plain bind would.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    if addr.port() != 0 {
        drop(udp_socket(addr, false)?);
    }
    udp_socket(addr, true)
}

/// Another listener on the address of one from [`bind_udp`], in its SO_REUSEPORT group.
pub(crate) fn bind_udp_sibling(addr: SocketAddr) -> io::Result<UdpSocket> {
    udp_socket(addr, true)
}

fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(reuse_port)?;
    // Best effort: a smaller buffer is a tuning problem, not a reason to refuse to start.
    let _ = socket.set_recv_buffer_size(LISTENER_RECV_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Opens a client's upstream socket: bound to `local` (port 0: an ephemeral port; a given port
/// when a saved session is restored), connected to the PBX so that only the PBX's datagrams are
/// accepted on it.
pub(crate) fn connect_upstream(
    local: SocketAddr,
    pbx: SocketAddr,
) -> io::Result<tokio::net::UdpSocket> {
    let socket = UdpSocket::bind(local)?;
    socket.connect(pbx)?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket)
}
