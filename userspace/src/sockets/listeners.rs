//! Sockets that accept traffic from the network, asked of the kernel with sock_diag
//! (`NETLINK_SOCK_DIAG`) in this process's network namespace: TCP sockets in LISTEN
//! and UDP sockets not connected to a peer, IPv4 and IPv6. Unlike /proc/net/tcp6,
//! sock_diag says whether a `[::]` socket also takes IPv4 (`IPV6_V6ONLY`) and to
//! which device a socket is bound (`SO_BINDTODEVICE`).

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::canonical;
use crate::policy::Proto;

/// One socket that takes new traffic from the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub proto: Proto,
    /// The bound address (unspecified for a wildcard socket); IPv4-mapped IPv6
    /// addresses are given as IPv4.
    pub local: IpAddr,
    pub port: u16,
    /// An IPv6 socket that does not take IPv4 (`IPV6_V6ONLY`); false for IPv4.
    pub v6only: bool,
    /// The interface index of `SO_BINDTODEVICE`, 0 when not bound to one.
    pub bound_ifindex: u32,
    /// The socket's inode (`socket:[inode]` in /proc/PID/fd).
    pub inode: u32,
    pub uid: u32,
    /// Not a socket: a port a DNAT rule publishes (dnat.rs), and where it
    /// forwards to.
    pub dnat: Option<String>,
}

impl Listener {
    /// Whether it takes IPv4 packets.
    pub fn takes_ipv4(&self) -> bool {
        match self.local {
            IpAddr::V4(_) => true,
            IpAddr::V6(v6) => v6.is_unspecified() && !self.v6only,
        }
    }

    /// Whether it takes IPv6 packets.
    pub fn takes_ipv6(&self) -> bool {
        self.local.is_ipv6()
    }

    /// Bound to a loopback address: nothing from another host reaches it.
    pub fn loopback_only(&self) -> bool {
        self.local.is_loopback()
    }
}

/// Every listening TCP socket and unconnected UDP socket of this namespace.
pub fn listeners() -> io::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (proto, ip_proto, states) in [
        (Proto::Tcp, IPPROTO_TCP, StateFlags::LISTEN),
        // An unconnected UDP socket is in TCP_CLOSE; a connected one (a client
        // that called connect) is ESTABLISHED and takes datagrams from its peer only.
        (Proto::Udp, IPPROTO_UDP, StateFlags::CLOSE),
    ] {
        for family in [AF_INET, AF_INET6] {
            for response in dump(family, ip_proto, states.clone())? {
                out.push(listener_of(proto, &response));
            }
        }
    }
    Ok(out)
}

fn listener_of(proto: Proto, response: &InetResponse) -> Listener {
    let id = &response.header.socket_id;
    let v6only = response
        .nlas
        .iter()
        .any(|nla| matches!(nla, Nla::SkV6Only(true)));
    Listener {
        proto,
        local: canonical(id.source_address),
        port: id.source_port,
        v6only: id.source_address.is_ipv6() && v6only,
        bound_ifindex: id.interface_id,
        inode: response.header.inode,
        uid: response.header.uid,
        dnat: None,
    }
}

/// One sock_diag dump: the sockets of `family` and `protocol` in `states`.
pub(super) fn dump(family: u8, protocol: u8, states: StateFlags) -> io::Result<Vec<InetResponse>> {
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id: if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        },
    });
    dump_with(request, |answer| match answer {
        SockDiagMessage::InetResponse(response) => Some(*response),
        _ => None,
    })
}

/// Sends `request` as a sock_diag dump and keeps what `keep` makes of each
/// answer, until the kernel says the dump is done.
pub(super) fn dump_with<M, T>(
    request: M,
    mut keep: impl FnMut(M) -> Option<T>,
) -> io::Result<Vec<T>>
where
    M: NetlinkSerializable + NetlinkDeserializable,
{
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0)?;

    let mut found = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        if size == 0 {
            return Ok(found);
        }
        let mut offset = 0;
        while offset < size {
            let reply: NetlinkMessage<M> = NetlinkMessage::deserialize(&buffer[offset..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(answer) => found.extend(keep(answer)),
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(error) => {
                    return match error.code {
                        None => Ok(found),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    };
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs no privilege: sock_diag lists the caller's namespace to anyone.
    #[test]
    fn finds_a_listener_this_process_opened() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let udp = std::net::UdpSocket::bind("[::1]:0").expect("bind udp");
        let (tcp_port, udp_port) = (
            tcp.local_addr().unwrap().port(),
            udp.local_addr().unwrap().port(),
        );
        let all = listeners().expect("sock_diag");
        let found = all
            .iter()
            .find(|l| l.proto == Proto::Tcp && l.port == tcp_port)
            .expect("the TCP listener");
        assert!(found.loopback_only() && found.takes_ipv4() && !found.takes_ipv6());
        let found = all
            .iter()
            .find(|l| l.proto == Proto::Udp && l.port == udp_port)
            .expect("the UDP socket");
        assert!(found.loopback_only() && found.takes_ipv6() && !found.takes_ipv4());
    }
}
