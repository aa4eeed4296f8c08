//! The host's TCP socket table, from `/proc/net/tcp` and `/proc/net/tcp6` of the
//! current network namespace: which sessions the anti-lockout check must keep, and
//! which connections the host opened before Airlock's egress program could see
//! their SYN. `listeners` asks sock_diag for the sockets that take new traffic
//! (TCP and UDP), for `airlock check`; `dnat` reads the ports NAT rules publish.

pub mod dnat;
mod established;
pub mod listeners;
pub mod owners;

pub use listeners::{Listener, listeners};

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// `st` of an established connection.
pub const ESTABLISHED: u8 = 0x01;
/// `st` of a listening socket.
pub const LISTEN: u8 = 0x0a;

/// One line of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: IpAddr,
    pub local_port: u16,
    pub peer: IpAddr,
    pub peer_port: u16,
    pub state: u8,
}

/// Both tables of this network namespace (empty where unreadable).
pub fn read() -> Vec<TcpSocket> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .flat_map(|path| parse(&read_proc(path).unwrap_or_default()))
        .collect()
}

/// The established TCP connections of this network namespace, both families, from
/// sock_diag: what the lines of /proc/net/tcp and tcp6 in state [`ESTABLISHED`]
/// say, for a third of the time. The kernel walks its whole connection hash table
/// for each dump (262,144 buckets on a small VM, shared by every namespace:
/// about 1.4 ms a walk on the bench's machine), and /proc walks it again for the
/// read that finds the end, and formats every line. One walk answers for both
/// families ([`established::both_families`]); where the kernel refuses that
/// request, one dump per family.
pub fn established() -> std::io::Result<Vec<TcpSocket>> {
    match established::both_families() {
        Ok(sockets) => Ok(sockets),
        Err(error) => {
            tracing::debug!(%error, "sock_diag: one dump for both families refused, one per family");
            established_per_family()
        }
    }
}

/// [`established`], one sock_diag dump (one walk of the table) per family.
fn established_per_family() -> std::io::Result<Vec<TcpSocket>> {
    use netlink_packet_sock_diag::{
        constants::{AF_INET, AF_INET6, IPPROTO_TCP},
        inet::StateFlags,
    };
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        for response in listeners::dump(family, IPPROTO_TCP, StateFlags::ESTABLISHED)? {
            let id = &response.header.socket_id;
            out.push(TcpSocket {
                local: canonical(id.source_address),
                local_port: id.source_port,
                peer: canonical(id.destination_address),
                peer_port: id.destination_port,
                state: ESTABLISHED,
            });
        }
    }
    Ok(out)
}

/// A file of /proc/net, read with few system calls: the kernel walks its whole
/// connection hash table (262,144 buckets on a small VM) on every read of
/// /proc/net/tcp that runs out of buffered lines, and `read_to_string` on a file
/// of unknown size starts with reads of a few dozen bytes.
pub fn read_proc(path: &str) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::with_capacity(256 * 1024);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// Parses one table; lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<TcpSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, local_port) = parse_endpoint(fields.get(1)?)?;
            let (peer, peer_port) = parse_endpoint(fields.get(2)?)?;
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            Some(TcpSocket {
                local,
                local_port,
                peer,
                peer_port,
                state,
            })
        })
        .collect()
}

/// Established connections whose local port no socket listens on: the host
/// connected out (an accepted connection has the listener's port).
pub fn opened_by_host(sockets: &[TcpSocket]) -> impl Iterator<Item = &TcpSocket> {
    let listening: BTreeSet<u16> = sockets
        .iter()
        .filter(|s| s.state == LISTEN)
        .map(|s| s.local_port)
        .collect();
    sockets.iter().filter(move |s| {
        s.state == ESTABLISHED && !listening.contains(&s.local_port) && !s.peer.is_loopback()
    })
}

/// IPv4-mapped IPv6 addresses (as in tcp6 and dual-stack daemons) as plain IPv4:
/// on the wire those connections are IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `ADDR:PORT` as the kernel prints it: the address as 32-bit words in host byte
/// order, the port in hex.
fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((canonical(ip), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_the_host_opened_are_told_from_accepted_ones() {
        // Listening on :5432; accepted 192.0.2.1:5432 <- 192.0.2.5:50000;
        // opened 192.0.2.1:40000 -> 203.0.113.7:443; a loopback connection.
        let table = "  sl  local_address rem_address   st tx_queue\n\
   0: 00000000:1538 00000000:0000 0A 0\n\
   1: 010200C0:1538 050200C0:C350 01 0\n\
   2: 010200C0:9C40 077100CB:01BB 01 0\n\
   3: 0100007F:9C41 0100007F:1F90 01 0\n";
        let sockets = parse(table);
        assert_eq!(sockets.len(), 4);
        let opened: Vec<_> = opened_by_host(&sockets).collect();
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert_eq!(opened[0].peer, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!((opened[0].local_port, opened[0].peer_port), (40000, 443));
    }
}
