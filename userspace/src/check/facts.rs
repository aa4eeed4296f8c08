//! What `check` asks the kernel, in this process's network namespace: the links
//! (up? traffic? which XDP programs?) and which pinned Airlock filters are attached
//! here, as opposed to filters pinned under the same root for another namespace.

use std::{io, path::PathBuf};

use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use serde::Serialize;

use crate::{
    link_type::{XdpPrograms, query},
    loader::{AttachMode, LINK_PIN, LinkKind, LoaderError, PinRoot, PolicyMaps, PolicySummary},
};

/// One interface of this namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetLink {
    pub name: String,
    pub ifindex: u32,
    pub up: bool,
    pub loopback: bool,
    /// Packets received since the interface was created.
    pub rx_packets: u64,
    #[serde(skip)]
    pub xdp: XdpPrograms,
}

/// Every interface of this namespace (one RTM_GETLINK dump).
pub fn links() -> io::Result<Vec<NetLink>> {
    let all = crate::rtnetlink::get_links(LinkMessage::default(), true)?;
    Ok(all.into_iter().map(net_link).collect())
}

fn net_link(link: LinkMessage) -> NetLink {
    let up = link.header.flags.contains(LinkFlags::Up);
    let loopback = link.header.flags.contains(LinkFlags::Loopback);
    let rx_packets = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Stats64(stats) => Some(stats.rx_packets),
            LinkAttribute::Stats(stats) => Some(u64::from(stats.rx_packets)),
            _ => None,
        })
        .unwrap_or(0);
    let facts = query::facts("", link);
    NetLink {
        name: facts.name,
        ifindex: facts.ifindex,
        up,
        loopback,
        rx_packets,
        xdp: facts.xdp,
    }
}

/// An Airlock filter attached to an interface of this namespace.
#[derive(Clone, Debug)]
pub struct Filter {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    pub dir: PathBuf,
    /// The policy in force, as recorded beside it.
    pub summary: Option<PolicySummary>,
}

/// The pinned filters whose program is the XDP program on the interface of the same
/// name here. Matching the program id, not the interface index, tells this
/// namespace's `eth0` from another's: indexes are per namespace and repeat.
pub fn filters_here(root: &PinRoot, links: &[NetLink]) -> Result<Vec<Filter>, LoaderError> {
    let mut out = Vec::new();
    for iface in root.interfaces()? {
        let Some(link) = links.iter().find(|l| l.name == iface) else {
            continue;
        };
        let dir = root.interface_dir(&iface);
        let Ok(state) = crate::loader::pinned_link_state(&dir.join(LINK_PIN), LinkKind::Xdp) else {
            continue;
        };
        let Some(mode) = AttachMode::of(&link.xdp, state.program_id) else {
            continue;
        };
        let summary = PolicyMaps::open_pinned(&dir)?.active_summary()?;
        out.push(Filter {
            iface,
            ifindex: link.ifindex,
            mode,
            dir,
            summary,
        });
    }
    Ok(out)
}
