//! The established TCP connections of both families in one walk of the kernel's
//! connection hash table. A `SOCK_DIAG_BY_FAMILY` dump names one family, and the
//! kernel walks the whole table (shared by IPv4 and IPv6, and by every namespace)
//! for each; the older `TCPDIAG_GETSOCK` request, which the kernel still answers
//! through the same code, dumps every family at once (`inet_diag_dump_compat`
//! asks for `AF_UNSPEC`). netlink-packet-sock-diag has the answer's layout, not
//! that request: [`Compat`] lays the request out (`struct inet_diag_req`,
//! `linux/inet_diag.h`) and hands the answers to the crate's parser.

use std::io;

use netlink_packet_core::{
    DecodeError, NetlinkDeserializable, NetlinkHeader, NetlinkSerializable, Parseable,
};
use netlink_packet_sock_diag::inet::InetResponseHeader;

use super::{TcpSocket, canonical, listeners};

/// `TCPDIAG_GETSOCK`: the request's message type, and each answer's.
const TCPDIAG_GETSOCK: u16 = 18;
/// `struct inet_diag_sockid`: ports, source and destination address (16 bytes
/// each), interface, cookie.
const SOCKET_ID: usize = 2 + 2 + 16 + 16 + 4 + 8;
/// `struct inet_diag_req`: family, the two prefix lengths and the extensions (a
/// byte each), the socket id (zeros: any), the state mask and `idiag_dbs`.
const REQUEST: usize = 4 + SOCKET_ID + 4 + 4;
/// `1 << TCP_ESTABLISHED`.
const ESTABLISHED_MASK: u32 = 1 << 1;
const AF_INET: u8 = 2;

/// A `TCPDIAG_GETSOCK` message: the dump request, or one socket's answer.
#[derive(Debug)]
enum Compat {
    Request,
    Socket(InetResponseHeader),
}

impl NetlinkSerializable for Compat {
    fn message_type(&self) -> u16 {
        TCPDIAG_GETSOCK
    }

    fn buffer_len(&self) -> usize {
        REQUEST
    }

    /// Only the request is ever sent. Its family is not looked at by a dump;
    /// established connections only.
    fn serialize(&self, buffer: &mut [u8]) {
        buffer.fill(0);
        buffer[0] = AF_INET;
        buffer[4 + SOCKET_ID..][..4].copy_from_slice(&ESTABLISHED_MASK.to_ne_bytes());
    }
}

impl NetlinkDeserializable for Compat {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        if header.message_type != TCPDIAG_GETSOCK {
            return Err(DecodeError::from(format!(
                "sock_diag answered a message of type {}",
                header.message_type
            )));
        }
        InetResponseHeader::parse(payload).map(Compat::Socket)
    }
}

/// Every established TCP connection of this network namespace, IPv4 and IPv6,
/// from one `TCPDIAG_GETSOCK` dump.
pub(super) fn both_families() -> io::Result<Vec<TcpSocket>> {
    listeners::dump_with(Compat::Request, |answer| match answer {
        Compat::Socket(header) => {
            let id = header.socket_id;
            Some(TcpSocket {
                local: canonical(id.source_address),
                local_port: id.source_port,
                peer: canonical(id.destination_address),
                peer_port: id.destination_port,
                // The kernel's own state, which the request's mask asked to be
                // established (the test holds it to that).
                state: header.state,
            })
        }
        Compat::Request => None,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener, TcpStream};

    use super::*;
    use crate::sockets::ESTABLISHED;

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
