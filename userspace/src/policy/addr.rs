//! Parsing one CIDR or bare address, with messages that say exactly what is wrong.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why a CIDR did not parse: a message and an optional hint.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AddrProblem {
    pub message: String,
    pub hint: Option<String>,
}

/// Whether `text` was evidently meant as an address rather than a set name, so a
/// typo in it is reported as a malformed address, not as an unknown set.
pub(crate) fn looks_like_address(text: &str) -> bool {
    text.contains('/')
        || text.contains(':')
        || (text.contains('.') && text.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
/// A prefix with host bits set is an error, because it usually means the author
/// meant a different network than the one the mask selects.
pub(crate) fn parse_cidr(text: &str) -> Result<IpNet, AddrProblem> {
    let malformed = |why: &str| AddrProblem {
        message: format!("malformed CIDR {text:?}: {why}"),
        hint: Some(
            "write an address (192.0.2.7, 2001:db8::7) or a network (192.0.2.0/24, 2001:db8::/32)"
                .to_string(),
        ),
    };
    let Some((addr_text, len_text)) = text.split_once('/') else {
        return text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| malformed("not an IPv4 or IPv6 address"));
    };
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| malformed(&format!("{addr_text:?} is not an IPv4 or IPv6 address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len_text.is_empty() || !len_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(&format!(
            "prefix length {len_text:?} is not a number"
        )));
    }
    let len: u32 = len_text.parse().unwrap_or(u32::MAX);
    if len > max {
        return Err(malformed(&format!(
            "prefix length {len_text} is longer than {max}"
        )));
    }
    // len <= 128 here, so the conversion cannot fail.
    let len = u8::try_from(len).map_err(|_| malformed("prefix length out of range"))?;
    let net = IpNet::new(addr, len).map_err(|_| malformed("prefix length out of range"))?;
    let network = net.trunc();
    if network != net {
        let host = host_bits(addr, net.hostmask());
        return Err(AddrProblem {
            message: format!("{text} has host bits set ({host} outside the /{len} mask)"),
            hint: Some(format!("did you mean {network}?")),
        });
    }
    Ok(net)
}

/// `addr & hostmask`: the bits the mask does not cover.
fn host_bits(addr: IpAddr, hostmask: IpAddr) -> IpAddr {
    match (addr, hostmask) {
        (IpAddr::V4(a), IpAddr::V4(m)) => IpAddr::V4((u32::from(a) & u32::from(m)).into()),
        (IpAddr::V6(a), IpAddr::V6(m)) => IpAddr::V6((u128::from(a) & u128::from(m)).into()),
        // Same family by construction; show the address unchanged otherwise.
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks_and_bare_addresses() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            parse_cidr("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            parse_cidr("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().prefix_len(), 0);
    }

    #[test]
    fn host_bits_message() {
        let e = parse_cidr("192.0.2.1/24").unwrap_err();
        assert_eq!(
            e.message,
            "192.0.2.1/24 has host bits set (0.0.0.1 outside the /24 mask)"
        );
        assert_eq!(e.hint.as_deref(), Some("did you mean 192.0.2.0/24?"));
        let e = parse_cidr("2001:db8::1/32").unwrap_err();
        assert_eq!(
            e.message,
            "2001:db8::1/32 has host bits set (::1 outside the /32 mask)"
        );
        assert_eq!(e.hint.as_deref(), Some("did you mean 2001:db8::/32?"));
    }

    #[test]
    fn malformed() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/x",
            "2001:db8::/129",
            "300.1.1.1",
            "hello",
            "10.0.0.0/-1",
        ] {
            let e = parse_cidr(bad).unwrap_err();
            assert!(e.message.starts_with("malformed CIDR"), "{bad}: {e:?}");
            assert!(e.message.contains(bad), "{bad}: {e:?}");
        }
        assert!(
            parse_cidr("10.0.0.0/33")
                .unwrap_err()
                .message
                .contains("longer than 32")
        );
    }

    #[test]
    fn address_heuristic() {
        assert!(looks_like_address("10.0.0.1"));
        assert!(looks_like_address("10.0.0.0/8"));
        assert!(looks_like_address("2001:db8::"));
        assert!(!looks_like_address("office"));
        assert!(!looks_like_address("eu.partners"));
    }
}
