//! Which of Airlock's programs can read an interface's frames, if any.
//!
//! XDP hands a program the frame from the device's link-layer header on: an
//! Ethernet header on Ethernet devices, nothing at all on devices without one, where
//! the IP header comes first. A program that expects the other layout reads address
//! bytes as an ethertype and passes everything as "not IP", so every interface is
//! classified before anything is attached, and one whose layout is not known for
//! certain is refused.
//!
//! IP-first devices are accepted by driver, each checked against the kernel's
//! receive path (which resets the mac header to the IP header before the packet
//! reaches generic XDP): tun in IFF_TUN mode (also tested with a real device),
//! WireGuard, PPP and rmnet. Other devices without an Ethernet header are refused:
//! the IP tunnels (ipip, sit, gre, ip6tnl) leave the outer packet's link-layer header
//! in front of the inner packet, and xfrm interfaces rebuild one there.

pub(crate) mod query;

pub use query::{LinkFacts, XdpPrograms, query, xdp_programs_of_index};

use query::{IFF_TAP, IFF_TUN};

/// How an interface's frames start, and so which program filters it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// An Ethernet header (VLAN tags allowed): `airlock_xdp`.
    Ethernet,
    /// The IP header, at offset 0: `airlock_xdp_l3`.
    Ip,
}

impl Framing {
    /// `ethernet` or `ip`, as `status` and the logs say it.
    pub const fn name(self) -> &'static str {
        match self {
            Framing::Ethernet => "ethernet",
            Framing::Ip => "ip",
        }
    }
}

/// An interface that gets no filter, or could not be looked at.
#[derive(Debug, thiserror::Error)]
pub enum LinkTypeError {
    #[error(
        "interface {iface} is {what} (link type {link_type}{kind}): {why}; Airlock filters \
         Ethernet devices and the IP devices tun, WireGuard, PPP and rmnet, and attaches to \
         nothing whose frames it would misread"
    )]
    Unsupported {
        iface: String,
        /// `ARPHRD_*` name and number.
        link_type: String,
        /// `, kind K` when the driver has one.
        kind: String,
        what: &'static str,
        why: &'static str,
    },
    #[error("interface {0} does not exist in this network namespace")]
    Missing(String),
    #[error("asking the kernel about interface {iface}: {source}")]
    Query {
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

const ARPHRD_ETHER: u16 = libc::ARPHRD_ETHER;
const ARPHRD_PPP: u16 = libc::ARPHRD_PPP;
const ARPHRD_RAWIP: u16 = 519;
const ARPHRD_IP6GRE: u16 = 823;
const ARPHRD_NONE: u16 = libc::ARPHRD_NONE;
const ARPHRD_LOOPBACK: u16 = libc::ARPHRD_LOOPBACK;

/// How `facts`' frames start, or why the interface gets no filter (what it is, why).
pub fn classify(facts: &LinkFacts) -> Result<Framing, (&'static str, &'static str)> {
    match (facts.kind.as_deref(), facts.arphrd) {
        // tun's receive path decides the layout by its mode, whatever link type
        // TUNSETLINK gave the device: IFF_TUN resets the mac header to the packet's
        // start (the IP header), IFF_TAP runs eth_type_trans.
        (Some("tun"), _) => match facts.tun_type {
            Some(IFF_TUN) => Ok(Framing::Ip),
            Some(IFF_TAP) => Ok(Framing::Ethernet),
            _ => Err((
                "a tun device",
                "the kernel did not say whether it is in tun or tap mode",
            )),
        },
        // wg_reset_packet resets the mac header to the decrypted IP header.
        (Some("wireguard"), ARPHRD_NONE) => Ok(Framing::Ip),
        // ppp_receive_nonmp_frame pulls the PPP protocol field and resets the mac
        // header to the IP header.
        (Some("ppp"), ARPHRD_PPP) => Ok(Framing::Ip),
        // rmnet_deliver_skb sets the mac header at the IP header.
        (Some("rmnet"), ARPHRD_RAWIP) => Ok(Framing::Ip),
        (_, ARPHRD_ETHER) => Ok(Framing::Ethernet),
        (_, ARPHRD_LOOPBACK) => Err(("the loopback device", "its traffic never leaves the host")),
        (_, ARPHRD_NONE | ARPHRD_PPP | ARPHRD_RAWIP) => Err((
            "a device without a link-layer header",
            "its driver is not one known to hand XDP the IP header first",
        )),
        (_, libc::ARPHRD_TUNNEL | libc::ARPHRD_TUNNEL6 | libc::ARPHRD_SIT)
        | (_, libc::ARPHRD_IPGRE | ARPHRD_IP6GRE) => Err((
            "an IP tunnel",
            "XDP sees its decapsulated packets behind the outer packet's link-layer header",
        )),
        _ => Err((
            "not an Ethernet or IP device",
            "its frames do not start with an Ethernet or IP header",
        )),
    }
}

/// The framing of `iface`, or an error naming it and its type.
pub fn framing_of(iface: &str) -> Result<(Framing, LinkFacts), LinkTypeError> {
    let facts = query(iface)
        .map_err(|source| LinkTypeError::Query {
            iface: iface.to_owned(),
            source,
        })?
        .ok_or_else(|| LinkTypeError::Missing(iface.to_owned()))?;
    match classify(&facts) {
        Ok(framing) => Ok((framing, facts)),
        Err((what, why)) => Err(LinkTypeError::Unsupported {
            iface: iface.to_owned(),
            link_type: link_type_name(facts.arphrd),
            kind: facts
                .kind
                .as_ref()
                .map(|kind| format!(", kind {kind}"))
                .unwrap_or_default(),
            what,
            why,
        }),
    }
}

/// Fails on the first interface that does not exist or gets no filter (checked
/// before anything is applied, so a refusal changes nothing).
pub fn check_supported(ifaces: &[String]) -> Result<(), LinkTypeError> {
    for iface in ifaces {
        framing_of(iface)?;
    }
    Ok(())
}

/// `ARPHRD_*` name and number, e.g. `loopback (772)`.
fn link_type_name(arphrd: u16) -> String {
    let name = match arphrd {
        ARPHRD_ETHER => "ether".to_owned(),
        ARPHRD_NONE => "none".to_owned(),
        ARPHRD_RAWIP => "rawip".to_owned(),
        libc::ARPHRD_TUNNEL => "ipip".to_owned(),
        libc::ARPHRD_TUNNEL6 => "tunnel6".to_owned(),
        libc::ARPHRD_IPGRE => "gre".to_owned(),
        ARPHRD_IP6GRE => "gre6".to_owned(),
        libc::ARPHRD_IEEE80211_RADIOTAP => "ieee802.11/radiotap".to_owned(),
        other => format!(
            "{:?}",
            netlink_packet_route::link::LinkLayerType::from(other)
        )
        .to_lowercase(),
    };
    format!("{name} ({arphrd})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kind: Option<&str>, arphrd: u16, tun_type: Option<u8>) -> LinkFacts {
        LinkFacts {
            name: "x".into(),
            kind: kind.map(str::to_owned),
            arphrd,
            tun_type,
            ..LinkFacts::default()
        }
    }

    #[test]
    fn ethernet_devices_get_the_ethernet_program() {
        for kind in [
            None,
            Some("veth"),
            Some("bridge"),
            Some("vlan"),
            Some("bond"),
        ] {
            assert_eq!(
                classify(&facts(kind, ARPHRD_ETHER, None)),
                Ok(Framing::Ethernet)
            );
        }
        assert_eq!(
            classify(&facts(Some("tun"), ARPHRD_ETHER, Some(IFF_TAP))),
            Ok(Framing::Ethernet)
        );
    }

    #[test]
    fn known_ip_devices_get_the_ip_program() {
        for (kind, arphrd, tun) in [
            ("tun", ARPHRD_NONE, Some(IFF_TUN)),
            // TUNSETLINK changes the type, not the layout.
            ("tun", ARPHRD_ETHER, Some(IFF_TUN)),
            ("wireguard", ARPHRD_NONE, None),
            ("ppp", ARPHRD_PPP, None),
            ("rmnet", ARPHRD_RAWIP, None),
        ] {
            assert_eq!(
                classify(&facts(Some(kind), arphrd, tun)),
                Ok(Framing::Ip),
                "{kind}"
            );
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for (kind, arphrd) in [
            (None, ARPHRD_LOOPBACK),
            // xfrm interfaces rebuild an Ethernet header in front of the packet.
            (Some("xfrm"), ARPHRD_NONE),
            (None, ARPHRD_NONE),
            (None, ARPHRD_PPP),
            (Some("ipip"), libc::ARPHRD_TUNNEL),
            (Some("sit"), libc::ARPHRD_SIT),
            (Some("gre"), libc::ARPHRD_IPGRE),
            (None, libc::ARPHRD_INFINIBAND),
            (None, libc::ARPHRD_IEEE80211_RADIOTAP),
        ] {
            assert!(
                classify(&facts(kind, arphrd, None)).is_err(),
                "{kind:?} {arphrd}"
            );
        }
        assert!(classify(&facts(Some("tun"), ARPHRD_NONE, None)).is_err());
    }

    #[test]
    fn link_types_are_named() {
        assert_eq!(link_type_name(ARPHRD_LOOPBACK), "loopback (772)");
        assert_eq!(link_type_name(ARPHRD_NONE), "none (65534)");
        assert_eq!(
            link_type_name(libc::ARPHRD_IEEE80211_RADIOTAP),
            "ieee802.11/radiotap (803)"
        );
    }
}
