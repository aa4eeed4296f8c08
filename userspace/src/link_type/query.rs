//! Asking the kernel (rtnetlink RTM_GETLINK, in this process's network namespace)
//! what an interface is: its link type, its driver kind and the XDP programs on it.
//! /sys/class/net would do for the type, but it shows the namespace sysfs was mounted
//! in, not necessarily ours (see `interfaces::existing_interfaces`), and has no XDP
//! program ids.

use netlink_packet_core::Nla as _;
use netlink_packet_route::link::{
    InfoData, InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp,
};

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
    let mut message = LinkMessage::default();
    message
        .attributes
        .push(LinkAttribute::IfName(iface.to_owned()));
    match crate::rtnetlink::get_links(message, false) {
        Ok(links) => Ok(links.into_iter().next().map(|link| facts(iface, link))),
        Err(error) if error.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(error) => Err(error),
    }
}

pub(crate) fn facts(iface: &str, link: LinkMessage) -> LinkFacts {
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
