//! Asking the kernel (rtnetlink RTM_GETLINK, in this process's network namespace)
//! what an interface is: its link type, its driver kind and the XDP programs on it.
//! /sys/class/net would do for the type, but it shows the namespace sysfs was mounted
//! in, not necessarily ours (see `interfaces::existing_interfaces`), and has no XDP
//! program ids.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla as _,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoData, InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `IFLA_TUN_TYPE`: the tun device's mode, `IFF_TUN` or `IFF_TAP`.
const IFLA_TUN_TYPE: u16 = 3;
pub(crate) const IFF_TUN: u8 = 1;
pub(crate) const IFF_TAP: u8 = 2;

/// What the kernel says about one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub name: String,
    pub ifindex: u32,
    /// `ARPHRD_*`.
    pub arphrd: u16,
    /// The driver's rtnetlink kind (`veth`, `tun`, `wireguard`...); none for most
    /// physical NICs.
    pub kind: Option<String>,
    /// For a tun device: `IFF_TUN` (IP packets) or `IFF_TAP` (Ethernet frames).
    pub tun_type: Option<u8>,
    /// The interface's upper device (bridge, bond), if any.
    pub master: Option<u32>,
    pub xdp: XdpPrograms,
}

/// The XDP programs attached to an interface, by mode (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpPrograms {
    pub driver: u32,
    pub generic: u32,
    pub offload: u32,
}

impl XdpPrograms {
    /// Each attached program with the mode it runs in.
    pub fn attached(&self) -> Vec<(u32, &'static str)> {
        [
            (self.driver, "native"),
            (self.generic, "generic"),
            (self.offload, "offload"),
        ]
        .into_iter()
        .filter(|(id, _)| *id != 0)
        .collect()
    }
}

/// Looks `iface` up by name. `Ok(None)`: no such interface here.
pub fn query(iface: &str) -> std::io::Result<Option<LinkFacts>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(iface.to_owned()));
    let mut request = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(message)),
    );
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    request.header.sequence_number = 1;
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;

    // One RTM_NEWLINK (or an error) and then the ACK; a link message with every
    // attribute fits in 64 KiB many times over.
    let mut buffer = vec![0u8; 64 * 1024];
    let mut found = None;
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let reply: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&buffer[offset..size])
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    found = Some(facts(iface, link));
                }
                NetlinkPayload::Error(error) => {
                    return match error.code {
                        // The ACK.
                        None => Ok(found),
                        Some(code) if -code.get() == libc::ENODEV => Ok(None),
                        Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
                    };
                }
                NetlinkPayload::Done(_) => return Ok(found),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

fn facts(iface: &str, link: LinkMessage) -> LinkFacts {
    let mut facts = LinkFacts {
        name: iface.to_owned(),
        ifindex: link.header.index,
        arphrd: link.header.link_layer_type.into(),
        ..LinkFacts::default()
    };
    for attribute in link.attributes {
        match attribute {
            LinkAttribute::IfName(name) => facts.name = name,
            LinkAttribute::Controller(master) => facts.master = Some(master),
            LinkAttribute::Xdp(xdp) => {
                for item in xdp {
                    match item {
                        LinkXdp::DrvProgId(id) => facts.xdp.driver = id,
                        LinkXdp::SkbProgId(id) => facts.xdp.generic = id,
                        LinkXdp::HwProgId(id) => facts.xdp.offload = id,
                        _ => {}
                    }
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => facts.kind = Some(kind_name(&kind)),
                        LinkInfo::Data(InfoData::Tun(tun)) => {
                            facts.tun_type = tun
                                .iter()
                                .find(|nla| nla.kind() == IFLA_TUN_TYPE)
                                .and_then(|nla| {
                                    let mut value = vec![0; nla.value_len()];
                                    nla.emit_value(&mut value);
                                    value.first().copied()
                                });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    facts
}

/// The kind as the kernel spells it (`ip -d link` shows the same).
fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Other(name) => name.clone(),
        known => known.to_string(),
    }
}

/// The XDP programs on the interface with index `ifindex` (for an upper device).
pub fn xdp_programs_of_index(ifindex: u32) -> Option<(String, XdpPrograms)> {
    let name = nix::net::if_::if_indextoname(ifindex).ok()?;
    let name = name.into_string().ok()?;
    let facts = query(&name).ok()??;
    Some((facts.name, facts.xdp))
}
