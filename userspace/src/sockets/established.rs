//! The established TCP connections of both families in one walk of the kernel's
//! connection hash table. A `SOCK_DIAG_BY_FAMILY` dump names one family, and the
//! kernel walks the whole table (shared by IPv4 and IPv6, and by every namespace)
//! for each; the older `TCPDIAG_GETSOCK` request, which the kernel still answers
//! through the same code, dumps every family at once. Neither message is in the
//! netlink crates, so both are laid out here (`linux/inet_diag.h`).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::{ESTABLISHED, TcpSocket, canonical};

/// `TCPDIAG_GETSOCK`: the request, and the type of each socket's answer.
const TCPDIAG_GETSOCK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HEADER: usize = 16;
/// `struct inet_diag_req`: family, two prefix lengths and the extensions (a
/// byte each), the socket id (48 bytes), the state mask and `idiag_dbs`.
const REQUEST: usize = 4 + SOCKET_ID + 4 + 4;
/// `struct inet_diag_sockid`: ports (big-endian), source and destination
/// address (16 bytes each), interface, cookie.
const SOCKET_ID: usize = 2 + 2 + 16 + 16 + 4 + 8;
/// `struct inet_diag_msg` up to the end of its socket id: family, state, timer,
/// retransmits (a byte each), then the id.
const ANSWER: usize = 4 + SOCKET_ID;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `1 << TCP_ESTABLISHED`.
const ESTABLISHED_MASK: u32 = 1 << 1;

/// Every established TCP connection of this network namespace, IPv4 and IPv6,
/// from one `TCPDIAG_GETSOCK` dump.
pub(super) fn both_families() -> io::Result<Vec<TcpSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&request(), 0)?;
    let mut found = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        if size == 0 {
            return Ok(found);
        }
        let mut messages = &buffer[..size];
        while messages.len() >= NLMSG_HEADER {
            let length = u32::from_ne_bytes(messages[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(messages[4..6].try_into().expect("2 bytes"));
            if length < NLMSG_HEADER || length > messages.len() {
                return Err(invalid("a message longer than the datagram"));
            }
            let payload = &messages[NLMSG_HEADER..length];
            match kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR => {
                    let code = payload
                        .get(0..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .ok_or_else(|| invalid("a short error message"))?;
                    return match code {
                        0 => Ok(found),
                        code => Err(io::Error::from_raw_os_error(-code)),
                    };
                }
                TCPDIAG_GETSOCK => found.push(answer(payload)?),
                _ => {}
            }
            // Messages are 4-byte aligned.
            messages = messages
                .get(length.next_multiple_of(4)..)
                .unwrap_or_default();
        }
    }
}

/// The dump request: every family (the request's own is not looked at by a
/// dump), established connections only.
fn request() -> Vec<u8> {
    let mut bytes = Vec::with_capacity(NLMSG_HEADER + REQUEST);
    bytes.extend_from_slice(&((NLMSG_HEADER + REQUEST) as u32).to_ne_bytes());
    bytes.extend_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    bytes.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    bytes.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    bytes.extend_from_slice(&[AF_INET, 0, 0, 0]);
    bytes.extend_from_slice(&[0; SOCKET_ID]);
    bytes.extend_from_slice(&ESTABLISHED_MASK.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes
}

/// One socket's `struct inet_diag_msg`.
fn answer(payload: &[u8]) -> io::Result<TcpSocket> {
    let message = payload
        .get(..ANSWER)
        .ok_or_else(|| invalid("a short socket message"))?;
    let port = |at: usize| u16::from_be_bytes([message[at], message[at + 1]]);
    let address = |at: usize| -> io::Result<IpAddr> {
        let bytes: [u8; 16] = message[at..at + 16].try_into().expect("16 bytes");
        match message[0] {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
            _ => Err(invalid("a socket of neither IPv4 nor IPv6")),
        }
    };
    Ok(TcpSocket {
        local: canonical(address(8)?),
        local_port: port(4),
        peer: canonical(address(24)?),
        peer_port: port(6),
        state: ESTABLISHED,
    })
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("sock_diag answered {what}"),
    )
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener, TcpStream};

    use super::*;

    /// Connections this process holds over loopback, one per family (sock_diag
    /// lists the caller's namespace to anyone): the one dump finds each with
    /// its addresses and ports, as the per-family dumps do. The IPv4 one is
    /// between two addresses (127.0.0.1 to 127.0.0.2), so that ends read the
    /// wrong way round (local for peer, or one port for the other) make a
    /// socket no end of it has; both ends of a `::1` connection share an
    /// address.
    #[test]
    fn one_dump_finds_the_connections_of_both_families() {
        let mut held = Vec::new();
        let mut expected = Vec::new();
        for address in ["127.0.0.2:0", "[::1]:0"] {
            let listener = TcpListener::bind(address).expect("bind");
            let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            let (near, far): (SocketAddr, SocketAddr) =
                (client.local_addr().unwrap(), client.peer_addr().unwrap());
            if far.is_ipv4() {
                assert_ne!(near.ip(), far.ip(), "the IPv4 ends share an address");
            }
            for (local, peer) in [(near, far), (far, near)] {
                expected.push(TcpSocket {
                    local: local.ip(),
                    local_port: local.port(),
                    peer: peer.ip(),
                    peer_port: peer.port(),
                    state: ESTABLISHED,
                });
            }
            held.push((listener, client, server));
        }
        let found = both_families().expect("TCPDIAG_GETSOCK");
        let per_family = super::super::established_per_family().expect("SOCK_DIAG_BY_FAMILY");
        for socket in &expected {
            assert!(found.contains(socket), "{socket:?} not in {found:?}");
            assert!(
                per_family.contains(socket),
                "{socket:?} not in {per_family:?}"
            );
        }
        assert!(found.iter().all(|s| s.state == ESTABLISHED));
    }
}
