//! The host facts the anti-lockout check looks at, read from this host (this
//! network namespace): the SSH sessions (`SSH_CONNECTION` and the socket table),
//! the default gateways and the interface addresses.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;

use crate::sockets::{self, canonical};

/// Where an SSH peer was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerOrigin {
    /// The `SSH_CONNECTION` environment variable: the session this command runs in.
    SshConnection,
    /// An ESTABLISHED connection in the socket table.
    SocketTable,
}

/// One SSH session: `peer` talks to `local:port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SshPeer {
    pub peer: IpAddr,
    pub peer_port: u16,
    pub local: IpAddr,
    pub port: u16,
    pub origin: PeerOrigin,
}

/// A default route's next hop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gateway {
    pub addr: IpAddr,
    pub iface: String,
}

/// What the check looks at. [`Facts::from_system`] reads it from this host (this
/// network namespace); tests build it by hand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub ssh: Vec<SshPeer>,
    pub gateways: Vec<Gateway>,
    /// The host's addresses and the interface holding each. `None`: unknown (every
    /// session is then assumed to arrive on a filtered interface).
    pub local_addrs: Option<Vec<(IpAddr, String)>>,
}

impl Facts {
    /// Reads `SSH_CONNECTION`, the socket tables, the routing tables and the
    /// interface addresses. Unreadable sources are skipped (with a debug log).
    pub fn from_system() -> Facts {
        let env = std::env::var("SSH_CONNECTION").ok();
        let read = |path: &str| {
            crate::sockets::read_proc(path)
                .inspect_err(|error| tracing::debug!(path, %error, "anti-lockout: not read"))
                .unwrap_or_default()
        };
        let mut ssh = Vec::new();
        let env_peer = env.as_deref().and_then(parse_ssh_connection);
        let mut ports = BTreeSet::from([22u16]);
        if let Some(peer) = &env_peer {
            ports.insert(peer.port);
            ssh.push(peer.clone());
        }
        // sock_diag where the kernel has it (a few milliseconds less per apply);
        // else the same connections from /proc.
        let established = match crate::sockets::established() {
            Ok(sockets) => sockets.iter().map(ssh_peer).collect(),
            Err(error) => {
                tracing::debug!(%error, "anti-lockout: sock_diag failed, reading /proc");
                let mut peers = parse_proc_net_tcp(&read("/proc/net/tcp"));
                peers.extend(parse_proc_net_tcp(&read("/proc/net/tcp6")));
                peers
            }
        };
        ssh.extend(
            established
                .into_iter()
                .filter(|p: &SshPeer| ports.contains(&p.port)),
        );
        let mut gateways = parse_proc_net_route(&read("/proc/net/route"));
        gateways.extend(parse_proc_net_ipv6_route(&read("/proc/net/ipv6_route")));
        let local_addrs = nix::ifaddrs::getifaddrs().ok().map(|addrs| {
            addrs
                .filter_map(|a| {
                    let address = a.address?;
                    let ip = if let Some(v4) = address.as_sockaddr_in() {
                        IpAddr::V4(v4.ip())
                    } else {
                        IpAddr::V6(address.as_sockaddr_in6()?.ip())
                    };
                    Some((ip, a.interface_name))
                })
                .collect()
        });
        Facts {
            ssh,
            gateways,
            local_addrs,
        }
    }
}

/// `client_ip client_port server_ip server_port`.
pub fn parse_ssh_connection(text: &str) -> Option<SshPeer> {
    let mut words = text.split_whitespace();
    let peer: IpAddr = words.next()?.parse().ok()?;
    let peer_port: u16 = words.next()?.parse().ok()?;
    let local: IpAddr = words.next()?.parse().ok()?;
    let port: u16 = words.next()?.parse().ok()?;
    Some(SshPeer {
        peer: canonical(peer),
        peer_port,
        local: canonical(local),
        port,
        origin: PeerOrigin::SshConnection,
    })
}

/// ESTABLISHED connections of /proc/net/tcp or tcp6 (state 01), as peers of their
/// local port.
pub fn parse_proc_net_tcp(text: &str) -> Vec<SshPeer> {
    sockets::parse(text)
        .iter()
        .filter(|s| s.state == sockets::ESTABLISHED)
        .map(ssh_peer)
        .collect()
}

/// The session an established connection is, as the socket table shows it.
fn ssh_peer(s: &sockets::TcpSocket) -> SshPeer {
    SshPeer {
        peer: s.peer,
        peer_port: s.peer_port,
        local: s.local,
        port: s.local_port,
        origin: PeerOrigin::SocketTable,
    }
}

const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;

/// Default routes with a gateway in /proc/net/route.
pub fn parse_proc_net_route(text: &str) -> Vec<Gateway> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| u32::from_str_radix(f.get(i)?, 16).ok();
            let (dest, gateway, flags, mask) = (hex(1)?, hex(2)?, hex(3)?, hex(7)?);
            let default = dest == 0 && mask == 0 && gateway != 0;
            (default && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY).then(|| Gateway {
                addr: IpAddr::V4(Ipv4Addr::from(gateway.to_ne_bytes())),
                iface: f[0].to_owned(),
            })
        })
        .collect()
}

/// Default routes with a next hop in /proc/net/ipv6_route (addresses as 32 hex
/// digits in network order).
pub fn parse_proc_net_ipv6_route(text: &str) -> Vec<Gateway> {
    let addr = |hex: &str| -> Option<Ipv6Addr> {
        if hex.len() != 32 {
            return None;
        }
        u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
    };
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, dest_len, next_hop, iface) = (f.first()?, f.get(1)?, f.get(4)?, f.get(9)?);
            let next_hop = addr(next_hop)?;
            let default = addr(dest)?.is_unspecified() && *dest_len == "00";
            (default && !next_hop.is_unspecified() && *iface != "lo").then(|| Gateway {
                addr: IpAddr::V6(next_hop),
                iface: (*iface).to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_connection_parses_and_maps_v4_in_v6() {
        let p = parse_ssh_connection("::ffff:192.0.2.5 50000 ::ffff:192.0.2.1 2222").unwrap();
        assert_eq!(p.peer, "192.0.2.5".parse::<IpAddr>().unwrap());
        assert_eq!(p.local, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((p.peer_port, p.port), (50000, 2222));
        assert!(parse_ssh_connection("garbage").is_none());
        assert!(parse_ssh_connection("1.2.3.4 5 6.7.8.9").is_none());
    }

    #[test]
    fn proc_net_tcp_established_only() {
        // 192.0.2.1:22 <- 192.0.2.5:50000 ESTABLISHED; a LISTEN line; IPv6 line.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 010200C0:0016 050200C0:C350 01 00000000:00000000 00:00000000 00000000     0        0 1\n\
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2\n";
        let peers = parse_proc_net_tcp(v4);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].peer, "192.0.2.5".parse::<IpAddr>().unwrap());
        assert_eq!(peers[0].local, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((peers[0].port, peers[0].peer_port), (22, 50000));
        // 2001:db8::1 as four host-order (little-endian) words.
        let v6 = "  sl  local_address remote_address st\n\
   0: B80D0120000000000000000001000000:0016 B80D0120000000000000000005000000:C350 01 0\n\
   1: 0000000000000000FFFF0000010200C0:0016 0000000000000000FFFF0000050200C0:C351 01 0\n";
        let peers = parse_proc_net_tcp(v6);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].peer, "2001:db8::5".parse::<IpAddr>().unwrap());
        assert_eq!(peers[0].local, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(peers[1].peer, "192.0.2.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn routes_give_default_gateways() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_proc_net_route(v4),
            vec![Gateway {
                addr: "192.0.2.1".parse().unwrap(),
                iface: "eth0".into()
            }]
        );
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00450003 eth0\n\
20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(
            parse_proc_net_ipv6_route(v6),
            vec![Gateway {
                addr: "fe80::1".parse().unwrap(),
                iface: "eth0".into()
            }]
        );
    }
}
