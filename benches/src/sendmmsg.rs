//! Sending from many source addresses on one socket: `sendmmsg(2)` with an `IP_PKTINFO` control
//! message per datagram naming its source (`ipi_spec_dst`). The socket is bound to 0.0.0.0, so
//! replies to any of those 127.x addresses come back to it. This is how the harness speaks for
//! thousands to a million distinct clients without a socket each; the only unsafe code here.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

/// Most datagrams handed to the kernel per `sendmmsg` call.
pub const BATCH: usize = 64;

/// Control-message space for one `in_pktinfo`, as `CMSG_SPACE` computes it (constant on Linux).
const CMSG_LEN: usize = 32;

/// One datagram of a batch: its payload, where it goes, and the source address it claims.
pub struct Outgoing<'a> {
    pub payload: &'a [u8],
    pub source: Ipv4Addr,
    pub target: SocketAddrV4,
}

/// Sends `batch` (at most [`BATCH`]) in one system call; returns how many the kernel took.
pub fn send_batch(socket: &UdpSocket, batch: &[Outgoing<'_>]) -> io::Result<usize> {
    assert!(batch.len() <= BATCH);
    // SAFETY: every structure below is plain old data that zero is valid for; each msghdr points
    // at the iovec, sockaddr and control buffer of the same index, all of which outlive the
    // sendmmsg call, and the control buffer is CMSG_SPACE(in_pktinfo) long, which is what
    // msg_controllen says and what CMSG_FIRSTHDR/CMSG_DATA write into.
    unsafe {
        let mut addrs: [libc::sockaddr_in; BATCH] = std::mem::zeroed();
        let mut iovs: [libc::iovec; BATCH] = std::mem::zeroed();
        let mut controls: [[u64; CMSG_LEN / 8]; BATCH] = [[0; CMSG_LEN / 8]; BATCH];
        let mut headers: [libc::mmsghdr; BATCH] = std::mem::zeroed();
        debug_assert!(
            libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize <= CMSG_LEN
        );
        for (i, out) in batch.iter().enumerate() {
            addrs[i] = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: out.target.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*out.target.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            iovs[i] = libc::iovec {
                iov_base: out.payload.as_ptr() as *mut libc::c_void,
                iov_len: out.payload.len(),
            };
            let hdr = &mut headers[i].msg_hdr;
            hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = controls[i].as_mut_ptr().cast();
            hdr.msg_controllen =
                libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(hdr);
            (*cmsg).cmsg_level = libc::IPPROTO_IP;
            (*cmsg).cmsg_type = libc::IP_PKTINFO;
            (*cmsg).cmsg_len =
                libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(out.source).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
        }
        let sent = libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            batch.len() as u32,
            0,
        );
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(sent as usize)
        }
    }
}

/// A UDP socket on 0.0.0.0 and an ephemeral port, with large buffers, that can send from any
/// local address.
pub fn any_source_socket() -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into())?;
    Ok(socket.into())
}
