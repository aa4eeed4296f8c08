//! Port specifications: `5432/tcp`, `60000-60100/udp`, bare `5432` (TCP, as in
//! Kubernetes), or a YAML integer.

use std::fmt;

/// Transport protocol of a port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`.
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An inclusive range of destination ports of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// Protocol.
    pub proto: Proto,
    /// First port, 1..=65535.
    pub first: u16,
    /// Last port, `first..=65535`.
    pub last: u16,
}

impl PortRange {
    /// Whether the range covers `port` of protocol `proto`.
    pub fn contains(&self, proto: Proto, port: u16) -> bool {
        self.proto == proto && self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}/{}", self.first, self.proto)
        } else {
            write!(f, "{}-{}/{}", self.first, self.last, self.proto)
        }
    }
}

/// A port spec that is not one, with what is wrong (as in the policy's diagnostics).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PortSpecError {
    pub message: String,
    pub hint: Option<String>,
}

impl std::str::FromStr for PortRange {
    type Err = PortSpecError;

    /// Parses the policy syntax.
    fn from_str(s: &str) -> Result<Self, PortSpecError> {
        parse_port_range(s).map_err(|(message, hint)| PortSpecError { message, hint })
    }
}

const FORMAT_HINT: &str = "write PORT[/PROTO] or FIRST-LAST[/PROTO] with PROTO tcp or udp, e.g. 5432/tcp or 60000-60100/udp";

/// Parses one port spec; errors are (message, hint).
pub(crate) fn parse_port_range(text: &str) -> Result<PortRange, (String, Option<String>)> {
    let (ports, proto) = match text.split_once('/') {
        None => (text, Proto::Tcp),
        Some((ports, "tcp")) => (ports, Proto::Tcp),
        Some((ports, "udp")) => (ports, Proto::Udp),
        Some((_, other)) => {
            return Err((
                format!("unknown protocol {other:?} in port {text:?} (expected tcp or udp)"),
                None,
            ));
        }
    };
    let (first_text, last_text) = ports.split_once('-').unwrap_or((ports, ports));
    let first = parse_port(text, first_text)?;
    let last = parse_port(text, last_text)?;
    if first > last {
        return Err((
            format!(
                "port range {text:?} is reversed (first port {first} is above last port {last})"
            ),
            Some(format!("did you mean {last}-{first}/{proto}?")),
        ));
    }
    Ok(PortRange { proto, first, last })
}

fn parse_port(whole: &str, text: &str) -> Result<u16, (String, Option<String>)> {
    // Name the whole spec only when it says more than the number itself.
    let within = if whole == text {
        String::new()
    } else {
        format!(" in {whole:?}")
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err((
            format!("malformed port {whole:?}"),
            Some(FORMAT_HINT.to_string()),
        ));
    }
    match text.parse::<u32>() {
        Ok(0) => Err((
            format!("port 0{within} is not a valid port (ports are 1-65535)"),
            None,
        )),
        Ok(p) if p <= u32::from(u16::MAX) => Ok(p as u16),
        _ => Err((
            format!("port {text}{within} is out of range (ports are 1-65535)"),
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        for (text, shown) in [
            ("5432/tcp", "5432/tcp"),
            ("5432", "5432/tcp"),
            ("53/udp", "53/udp"),
            ("60000-60100/udp", "60000-60100/udp"),
            ("8000-8000", "8000/tcp"),
            ("1-65535/tcp", "1-65535/tcp"),
        ] {
            assert_eq!(parse_port_range(text).unwrap().to_string(), shown);
        }
        let r: PortRange = "60000-60100/udp".parse().unwrap();
        assert!(r.contains(Proto::Udp, 60050));
        assert!(!r.contains(Proto::Tcp, 60050));
        assert!(!r.contains(Proto::Udp, 60101));
    }

    #[test]
    fn errors() {
        let msg = |t: &str| parse_port_range(t).unwrap_err();
        assert!(msg("0").0.contains("port 0"));
        assert!(msg("70000/tcp").0.contains("out of range"));
        assert!(msg("5432/sctp").0.contains("unknown protocol \"sctp\""));
        assert!(msg("54x2/tcp").0.contains("malformed port \"54x2/tcp\""));
        assert!(msg("-5/tcp").0.contains("malformed"));
        let (m, h) = msg("60100-60000/udp");
        assert!(m.contains("reversed"), "{m}");
        assert_eq!(h.as_deref(), Some("did you mean 60000-60100/udp?"));
    }
}
