//! Receiving many datagrams per system call with `recvmmsg(2)`, the one place the relay uses
//! `unsafe`. Under a flood, one call drains up to [`RECV_BATCH`] queued datagrams instead of one,
//! so the per-packet cost left is the copy and the policy check (benches/RESULTS.md). The
//! message headers are built on the stack for each call, pointing into buffers this struct owns,
//! so it holds no raw pointers and the front loop's future stays `Send`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

/// Datagrams taken from the socket per call.
pub(crate) const RECV_BATCH: usize = 32;

/// Receive buffers for one batch, each large enough for any UDP datagram, so that an oversized
/// datagram reaches the policy whole rather than truncated.
pub(crate) struct RecvBatch {
    buffers: Vec<Box<[u8]>>,
    received: [(usize, Option<SocketAddr>); RECV_BATCH],
}

impl RecvBatch {
    pub fn new(datagram_size: usize) -> Self {
        RecvBatch {
            buffers: (0..RECV_BATCH)
                .map(|_| vec![0u8; datagram_size].into_boxed_slice())
                .collect(),
            received: [(0, None); RECV_BATCH],
        }
    }

    /// Takes up to [`RECV_BATCH`] datagrams that are already queued on `socket` (non-blocking:
    /// `WouldBlock` when none is). Returns how many; read them with [`RecvBatch::get`].
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        recv_batch(socket.as_raw_fd(), &mut self.buffers, &mut self.received)
    }

    /// Datagram `i` of the last batch and its sender (`None` for an address family the relay
    /// does not serve, which the caller drops).
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let (len, source) = self.received[i];
        (&self.buffers[i][..len], source)
    }
}

fn recv_batch(
    fd: RawFd,
    buffers: &mut [Box<[u8]>],
    received: &mut [(usize, Option<SocketAddr>); RECV_BATCH],
) -> io::Result<usize> {
    // SAFETY: iovecs, sockaddr_storages and mmsghdrs are plain data for which all-zero is valid.
    // Entry i of `headers` points at `iovecs[i]` and `addrs[i]`, and `iovecs[i]` at `buffers[i]`
    // with its true length; all of them outlive the call, and nothing else touches them during
    // it. recvmmsg writes at most `msg_len` bytes into each buffer and at most `msg_namelen`
    // bytes into each address, and reports how many entries it filled; only those are read.
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
            received[i] = (headers[i].msg_len as usize, socket_addr(&addrs[i]));
        }
        Ok(count)
    }
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
