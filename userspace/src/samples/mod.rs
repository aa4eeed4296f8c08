//! Decoding the kernel's drop samples (shared by the agent's log and `airlock watch`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use airlock_common::{DropSample, MAP_DROP_SAMPLES, NO_RULE, Reason};
use aya::maps::{Map, MapData, RingBuf};
use serde::{Deserialize, Serialize};

use crate::loader::{LoaderError, pinned_path};

pub(crate) mod readers;
pub(crate) mod socket;

/// Opens the pinned drop-sample ring buffer of one interface's filter.
pub fn open_ring(dir: &Path) -> Result<RingBuf<MapData>, LoaderError> {
    let map_error = |source| LoaderError::Map {
        name: MAP_DROP_SAMPLES,
        source,
    };
    let data = MapData::from_pin(pinned_path(dir, MAP_DROP_SAMPLES)?).map_err(map_error)?;
    RingBuf::try_from(Map::from_map_data(data).map_err(map_error)?).map_err(map_error)
}

/// One sampled drop, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropEvent {
    pub source: Option<IpAddr>,
    pub protocol: u8,
    /// Destination port (TCP/UDP) or ICMP type.
    pub dst_port: u16,
    pub rule: Option<u32>,
    pub reason: Reason,
    /// Judged in monitor mode: the packet passed.
    pub monitor: bool,
    pub ifindex: u32,
}

impl DropEvent {
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<DropSample>() {
            return None;
        }
        // SAFETY: length checked; DropSample is plain integers (any bytes are valid).
        let sample: DropSample = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let source = match sample.family {
            4 => {
                let [a, b, c, d, ..] = sample.source;
                Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
            }
            6 => Some(IpAddr::V6(Ipv6Addr::from(sample.source))),
            _ => None,
        };
        Some(Self {
            source,
            protocol: sample.protocol,
            dst_port: sample.dst_port,
            rule: (sample.rule != NO_RULE).then_some(sample.rule),
            reason: Reason::from_number(u32::from(sample.reason))?,
            monitor: sample.monitor != 0,
            ifindex: sample.ifindex,
        })
    }

    pub fn source_text(&self) -> String {
        self.source
            .map_or_else(|| "?".to_owned(), |ip| ip.to_string())
    }

    pub fn protocol_name(&self) -> &'static str {
        match self.protocol {
            6 => "tcp",
            17 => "udp",
            1 => "icmp",
            58 => "icmpv6",
            0 => "-",
            _ => "other",
        }
    }
}

/// One sampled drop as people read it: what the agent passes to `airlock watch`
/// (one JSON line each), and the fields of its log event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRecord {
    pub interface: String,
    pub source: String,
    pub protocol: String,
    /// Destination port (TCP/UDP) or ICMP type.
    pub dst_port: u16,
    /// The rule that refused it; empty when no rule did.
    pub rule: String,
    pub reason: String,
    /// `dropped`, or `would_drop` in monitor mode (the packet passed).
    pub verdict: String,
}

impl DropRecord {
    /// `event` seen on `interface`, refused by the rule named `rule` (if any).
    pub fn new(interface: &str, event: &DropEvent, rule: Option<String>) -> Self {
        DropRecord {
            interface: interface.to_owned(),
            source: event.source_text(),
            protocol: event.protocol_name().to_owned(),
            dst_port: event.dst_port,
            rule: rule.unwrap_or_default(),
            reason: event.reason.name().to_owned(),
            verdict: if event.monitor {
                "would_drop"
            } else {
                "dropped"
            }
            .to_owned(),
        }
    }
}
