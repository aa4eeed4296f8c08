//! `explain --live`: one synthetic frame through the attached program with
//! BPF_PROG_TEST_RUN, and what the kernel decided.
//!
//! The XDP return value is the kernel's verdict. Its reason comes from the reason
//! counters (`REASON_STATS`, and for rule verdicts the sums of `RULE_STATS`): read
//! before and after, the reason whose counter moved by
//! exactly this one frame. Real traffic on the interface moves counters too, so a run
//! where more than one reason moved is retried a few times and, failing that, the
//! reason is reported as unknown (the verdict itself is never in doubt).
//!
//! The test run counts like a real packet: it shows up in `status` as one packet.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use airlock_common::{Counter, Reason};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use serde::Serialize;

use crate::{
    loader::{LoaderError, PROGRAM_PIN, PolicyMaps},
    reference::L4,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Destination of probes: documentation addresses (the verdict does not look at it).
const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const SRC_PORT: u16 = 40000;
/// Offset (in 8-byte units) of the non-first fragments probes send: well past the
/// RFC 1858 offset-1 case.
const FRAGMENT_OFFSET: u16 = 100;

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn protocol(l4: &L4, v6: bool) -> u8 {
    match *l4 {
        L4::Tcp { .. } => 6,
        L4::Udp { .. } | L4::NonFirstFragment => 17,
        L4::Icmp { .. } if !v6 => 1,
        L4::Icmpv6 { .. } if v6 => 58,
        L4::Icmp { .. } => 1,
        L4::Icmpv6 { .. } => 58,
        L4::Other { protocol } => protocol,
    }
}

fn transport(l4: &L4) -> Vec<u8> {
    let mut out = Vec::with_capacity(28);
    match *l4 {
        L4::Tcp { dst_port, flags } => {
            out.extend_from_slice(&SRC_PORT.to_be_bytes());
            out.extend_from_slice(&dst_port.to_be_bytes());
            out.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // sequence
            out.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment
            out.push(5 << 4); // data offset: 5 words
            out.push(flags);
            out.extend_from_slice(&64240u16.to_be_bytes()); // window
            out.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        }
        L4::Udp { dst_port } => {
            out.extend_from_slice(&SRC_PORT.to_be_bytes());
            out.extend_from_slice(&dst_port.to_be_bytes());
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(b"ping");
        }
        L4::Icmp { icmp_type } | L4::Icmpv6 { icmp_type } => {
            out.extend_from_slice(&[icmp_type, 0, 0, 0]);
            // Rest of header and room for a neighbour discovery target address.
            out.extend_from_slice(&[0u8; 20]);
        }
        L4::Other { .. } | L4::NonFirstFragment => out.extend_from_slice(&[0u8; 8]),
    }
    out
}

/// An Ethernet frame from `src` carrying `l4` (IPv4 or IPv6 after the source).
pub fn frame(src: IpAddr, l4: &L4) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(&DST_MAC);
    out.extend_from_slice(&SRC_MAC);
    let payload = transport(l4);
    let fragment = matches!(l4, L4::NonFirstFragment);
    match src {
        IpAddr::V4(src) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let start = out.len();
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
            out.extend_from_slice(&0x4242u16.to_be_bytes());
            let frag = if fragment { FRAGMENT_OFFSET } else { 0 };
            out.extend_from_slice(&frag.to_be_bytes());
            out.extend_from_slice(&[64, protocol(l4, false), 0, 0]);
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&DST_V4.octets());
            let sum = checksum(&out[start..start + 20]);
            out[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
        }
        IpAddr::V6(src) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            let ext = if fragment { 8 } else { 0 };
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&((ext + payload.len()) as u16).to_be_bytes());
            out.push(if fragment { 44 } else { protocol(l4, true) });
            out.push(64);
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&DST_V6.octets());
            if fragment {
                out.extend_from_slice(&[protocol(l4, true), 0]);
                out.extend_from_slice(&(FRAGMENT_OFFSET << 3).to_be_bytes());
                out.extend_from_slice(&0xa1a2_a3a4u32.to_be_bytes());
            }
        }
    }
    out.extend_from_slice(&payload);
    out
}

/// What the attached program did with one probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelVerdict {
    /// The XDP action (1 drop, 2 pass).
    pub action: u32,
    pub pass: bool,
    /// The reason counter that moved by exactly this frame, when that was
    /// unambiguous.
    #[serde(serialize_with = "reason_name")]
    pub reason: Option<Reason>,
    /// Runs made to get an unambiguous reason (real traffic moves counters too).
    pub attempts: u32,
}

fn reason_name<S: serde::Serializer>(reason: &Option<Reason>, s: S) -> Result<S::Ok, S::Error> {
    match reason {
        Some(r) => s.serialize_str(r.name()),
        None => s.serialize_none(),
    }
}

/// Errors of a live probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("opening the pinned program {path}: {source}")]
    Program {
        path: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF_PROG_TEST_RUN: {0}")]
    TestRun(#[source] aya::programs::ProgramError),
}

const ATTEMPTS: u32 = 5;

/// Runs `frame` through the program pinned in `dir` (an interface's pin directory).
pub fn run_pinned(dir: &Path, frame: &[u8]) -> Result<KernelVerdict, ProbeError> {
    let path = crate::loader::pinned_path(dir, PROGRAM_PIN)?;
    let program =
        Xdp::from_pin(&path, XdpAttachType::Interface).map_err(|source| ProbeError::Program {
            path: path.display().to_string(),
            source,
        })?;
    let maps = PolicyMaps::open_pinned(dir)?;
    // The IP-first program (tun, WireGuard...) gets the packet without the
    // Ethernet header, as on its interface.
    let ip_first = program
        .info()
        .is_ok_and(|info| info.name_as_str() == Some(crate::loader::PROGRAM_NAME_L3));
    let frame = if ip_first { &frame[14..] } else { frame };
    let one = Counter {
        packets: 1,
        bytes: frame.len() as u64,
    };
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        let before = maps.counters()?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..Default::default()
            })
            .map_err(ProbeError::TestRun)?;
        let after = maps.counters()?;
        let moved: Vec<(Reason, Counter)> = Reason::ALL
            .iter()
            .map(|&r| {
                let (b, a) = (before.reason(r), after.reason(r));
                (
                    r,
                    Counter {
                        packets: a.packets.wrapping_sub(b.packets),
                        bytes: a.bytes.wrapping_sub(b.bytes),
                    },
                )
            })
            .filter(|(_, d)| *d != Counter::default())
            .collect();
        let verdict = KernelVerdict {
            action: result.return_value,
            pass: result.return_value == XDP_PASS,
            reason: match moved[..] {
                [(reason, d)] if d == one => Some(reason),
                _ => None,
            },
            attempts: attempt,
        };
        if verdict.reason.is_some() {
            return Ok(verdict);
        }
        last = Some(verdict);
    }
    Ok(last.expect("at least one attempt"))
}

/// Name of an XDP action.
pub fn action_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "XDP_?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_frame_layout() {
        let f = frame("198.51.100.10".parse().unwrap(), &L4::tcp_syn(5432));
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(f[23], 6);
        assert_eq!(&f[26..30], &[198, 51, 100, 10]);
        assert_eq!(checksum(&f[14..34]), 0, "header checksum verifies");
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 5432);
        assert_eq!(f[47], 0x02, "SYN");
    }

    #[test]
    fn ipv6_fragment_and_icmp_frames() {
        let f = frame("2001:db8::5".parse().unwrap(), &L4::NonFirstFragment);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[20], 44, "fragment header next");
        assert_eq!(u16::from_be_bytes([f[18], f[19]]) as usize, f.len() - 54);
        assert_eq!(u16::from_be_bytes([f[56], f[57]]) >> 3, FRAGMENT_OFFSET);
        let f = frame(
            "2001:db8::5".parse().unwrap(),
            &L4::Icmpv6 { icmp_type: 135 },
        );
        assert_eq!((f[20], f[54]), (58, 135));
        let f = frame("192.0.2.9".parse().unwrap(), &L4::NonFirstFragment);
        assert_eq!(u16::from_be_bytes([f[20], f[21]]) & 0x1fff, FRAGMENT_OFFSET);
        assert_eq!(checksum(&f[14..34]), 0);
    }
}
