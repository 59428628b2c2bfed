//! The relay's system calls that the standard library, tokio and socket2 do not offer, and so
//! the one place the relay uses `unsafe`:
//! - receiving many datagrams per call with `recvmmsg(2)`. Under a flood, one call drains up to
//!   [`RECV_BATCH`] queued datagrams instead of one, so the per-packet cost left is the copy and
//!   the policy check (benches/RESULTS.md). The message headers are built on the stack for each
//!   call, pointing into buffers this struct owns, so it holds no raw pointers and the front
//!   loop's future stays `Send`.
//! - on a wildcard listener, learning which local address each datagram was sent to
//!   (`IP_PKTINFO`, `IPV6_RECVPKTINFO`) and sending the replies from that address
//!   (`sendmsg(2)` with a pktinfo), so a host with several addresses answers a client from the
//!   address it spoke to, not from whichever the routing table picks.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

/// Datagrams taken from the socket per call.
pub(crate) const RECV_BATCH: usize = 32;

/// Room for one pktinfo control message of either family (in6_pktinfo is the larger).
const CONTROL_SPACE: usize = 64;

/// One received datagram: its length, its sender, and the local address it was sent to (known
/// on a listener with pktinfo turned on).
type Received = (usize, Option<SocketAddr>, Option<IpAddr>);

/// Receive buffers for one batch, each large enough for any UDP datagram, so that an oversized
/// datagram reaches the policy whole rather than truncated.
pub(crate) struct RecvBatch {
    buffers: Vec<Box<[u8]>>,
    control: Box<[[u8; CONTROL_SPACE]; RECV_BATCH]>,
    received: [Received; RECV_BATCH],
}

impl RecvBatch {
    pub fn new(datagram_size: usize) -> Self {
        RecvBatch {
            buffers: (0..RECV_BATCH)
                .map(|_| vec![0u8; datagram_size].into_boxed_slice())
                .collect(),
            control: Box::new([[0; CONTROL_SPACE]; RECV_BATCH]),
            received: [(0, None, None); RECV_BATCH],
        }
    }

    /// Takes up to [`RECV_BATCH`] datagrams that are already queued on `socket` (non-blocking:
    /// `WouldBlock` when none is). Returns how many; read them with [`RecvBatch::get`].
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        recv_batch(
            socket.as_raw_fd(),
            &mut self.buffers,
            &mut self.control,
            &mut self.received,
        )
    }

    /// Datagram `i` of the last batch, its sender (`None` for an address family the relay does
    /// not serve, which the caller drops), and the local address it was sent to (`None` unless
    /// the socket reports it: see [`receive_destinations`]).
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>, Option<IpAddr>) {
        let (len, source, destination) = self.received[i];
        (&self.buffers[i][..len], source, destination)
    }
}

/// Turns on the reporting of each datagram's destination address on a wildcard listener.
pub(crate) fn receive_destinations(socket: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int and the length passed is its size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `datagram` to `to` from the local address `from` (non-blocking), on a wildcard socket
/// of `from`'s family.
pub(crate) fn send_from(
    socket: &impl AsRawFd,
    datagram: &[u8],
    to: SocketAddr,
    from: IpAddr,
) -> io::Result<usize> {
    // SAFETY: every struct is plain data for which all-zero is valid. The header points at
    // `iovec` (which points at `datagram`, read only), at `address` with its true length and at
    // `control` with the length of the one control message written into it, whose header and
    // data CMSG_FIRSTHDR and CMSG_DATA place inside `control` (CONTROL_SPACE holds
    // CMSG_SPACE of either pktinfo). All of them outlive the call.
    unsafe {
        let mut control = [0u8; CONTROL_SPACE];
        let mut iovec = libc::iovec {
            iov_base: datagram.as_ptr() as *mut libc::c_void,
            iov_len: datagram.len(),
        };
        let mut address: libc::sockaddr_storage = zeroed();
        let address_len = write_socket_addr(&mut address, to);
        let mut header: libc::msghdr = zeroed();
        header.msg_name = (&mut address as *mut libc::sockaddr_storage).cast();
        header.msg_namelen = address_len;
        header.msg_iov = &mut iovec;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        let (level, kind, data_len) = match from {
            IpAddr::V4(_) => (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                size_of::<libc::in_pktinfo>(),
            ),
            IpAddr::V6(_) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                size_of::<libc::in6_pktinfo>(),
            ),
        };
        header.msg_controllen = libc::CMSG_SPACE(data_len as u32) as usize;
        let message = libc::CMSG_FIRSTHDR(&header);
        (*message).cmsg_level = level;
        (*message).cmsg_type = kind;
        (*message).cmsg_len = libc::CMSG_LEN(data_len as u32) as usize;
        match from {
            IpAddr::V4(v4) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(v4).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(message).cast(), info);
            }
            IpAddr::V6(v6) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: v6.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(message).cast(), info);
            }
        }
        let sent = libc::sendmsg(socket.as_raw_fd(), &header, libc::MSG_DONTWAIT);
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// Writes `addr` into `storage`, returning the length of the struct written.
fn write_socket_addr(storage: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is large and aligned enough for either struct.
    unsafe {
        match addr {
            SocketAddr::V4(v4) => {
                let out =
                    &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                out.sin_family = libc::AF_INET as libc::sa_family_t;
                out.sin_port = v4.port().to_be();
                out.sin_addr = libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                };
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(v6) => {
                let out =
                    &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                out.sin6_port = v6.port().to_be();
                out.sin6_addr = libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                };
                out.sin6_flowinfo = v6.flowinfo();
                out.sin6_scope_id = v6.scope_id();
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

fn recv_batch(
    fd: RawFd,
    buffers: &mut [Box<[u8]>],
    control: &mut [[u8; CONTROL_SPACE]; RECV_BATCH],
    received: &mut [Received; RECV_BATCH],
) -> io::Result<usize> {
    // SAFETY: iovecs, sockaddr_storages and mmsghdrs are plain data for which all-zero is valid.
    // Entry i of `headers` points at `iovecs[i]`, `addrs[i]` and `control[i]`, and `iovecs[i]`
    // at `buffers[i]`, each with its true length; all of them outlive the call, and nothing else
    // touches them during it. recvmmsg writes at most `msg_len` bytes into each buffer, at most
    // `msg_namelen` bytes into each address and `msg_controllen` into each control buffer, and
    // reports how many entries it filled; only those are read.
    unsafe {
        let mut addrs: [libc::sockaddr_storage; RECV_BATCH] = zeroed();
        let mut iovecs: [libc::iovec; RECV_BATCH] = zeroed();
        let mut headers: [libc::mmsghdr; RECV_BATCH] = zeroed();
        for i in 0..RECV_BATCH {
            iovecs[i] = libc::iovec {
                iov_base: buffers[i].as_mut_ptr().cast(),
                iov_len: buffers[i].len(),
            };
            headers[i].msg_hdr.msg_iov = &mut iovecs[i];
            headers[i].msg_hdr.msg_iovlen = 1;
            headers[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            headers[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            headers[i].msg_hdr.msg_control = control[i].as_mut_ptr().cast();
            headers[i].msg_hdr.msg_controllen = CONTROL_SPACE;
        }
        let count = libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            RECV_BATCH as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        );
        if count < 0 {
            return Err(io::Error::last_os_error());
        }
        let count = count as usize;
        for i in 0..count {
            received[i] = (
                headers[i].msg_len as usize,
                socket_addr(&addrs[i]),
                destination(&headers[i].msg_hdr),
            );
        }
        Ok(count)
    }
}

/// # Safety
/// `header` must have been filled in by `recvmmsg`, its control buffer still alive.
unsafe fn destination(header: &libc::msghdr) -> Option<IpAddr> {
    let mut message = libc::CMSG_FIRSTHDR(header);
    while !message.is_null() {
        match ((*message).cmsg_level, (*message).cmsg_type) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                let info: libc::in_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(message).cast());
                return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                let info: libc::in6_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(message).cast());
                return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            _ => message = libc::CMSG_NXTHDR(header, message),
        }
    }
    None
}

/// # Safety
/// `addr` must have been filled in by the kernel (its family says which struct it holds).
unsafe fn socket_addr(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            let v4 = &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            let v6 = &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
