//! The live test's second traffic source, for kernels that refuse
//! BPF_F_TEST_XDP_LIVE_FRAMES: a raw packet socket (AF_PACKET) on the client's
//! veth, sending the test frame in batches with `sendmmsg` and bypassing the
//! qdisc. Every frame crosses the veth to the receiver, whose XDP program runs in
//! its NAPI thread as with the live-frames generator; but the socket builds an
//! skb per frame, so it sends far fewer frames a second than the kernel's
//! generator, and the receiver's rate is mostly the sender's. Its CPU time per
//! frame (which includes turning each skb into an XDP frame) is the figure that
//! still tells the programs apart.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// Frames per `sendmmsg` call.
const BATCH: usize = 64;

/// A raw packet socket bound to one interface (of the namespace it was opened in).
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens it on `ifindex` of the calling thread's network namespace. Protocol 0:
    /// it sends only, and is handed no received frame.
    pub fn open(ifindex: u32) -> Result<Self> {
        // SAFETY: plain integers in, a new descriptor (or -1) out.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if bound != 0 {
            bail!(
                "binding the packet socket to interface {ifindex}: {}",
                std::io::Error::last_os_error()
            );
        }
        let one: libc::c_int = 1;
        // SAFETY: an int option of the size given. Without the bypass, frames go
        // through the veth's (noqueue) qdisc code first: cost on the sender only.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        Ok(Self { fd })
    }

    /// Sends `frame` over and over for `duration` (bounded by it); returns the
    /// frames the kernel took. A full receiver ring refuses some (ENOBUFS, or the
    /// veth's queue stopped): those are retried, not counted.
    pub fn send_for(&self, frame: &[u8], duration: Duration) -> Result<u64> {
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr().cast_mut().cast(),
            iov_len: frame.len(),
        };
        // SAFETY: all-zero is a valid mmsghdr; each points at the one iovec, which
        // the kernel only reads.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for m in &mut msgs {
            m.msg_hdr.msg_iov = &raw mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let deadline = Instant::now() + duration;
        let mut sent = 0u64;
        let mut refused = 0u64;
        while Instant::now() < deadline {
            // SAFETY: BATCH valid mmsghdrs.
            let n =
                unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n > 0 {
                sent += n as u64;
                continue;
            }
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ENETDOWN) => {
                    refused += 1;
                    // The receiver is behind; let it drain.
                    if refused.is_multiple_of(64) {
                        std::thread::yield_now();
                    }
                }
                _ => bail!("sendmmsg on the packet socket: {error}"),
            }
        }
        Ok(sent)
    }
}
