//! The return-traffic flow table as user space sees it: how full it is (for
//! `status`), and direct access for tests. The kernel side (ebpf-programs/src/flows.rs)
//! says what the table is for and why it is filled only by the egress program.

use std::{net::IpAddr, path::Path};

use airlock_common::{FLOW_FAMILY_V4, FLOW_TABLE_ENTRIES, FlowKey, FlowState, MAP_FLOWS};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData},
};

use super::LoaderError;

pub struct FlowTable {
    map: HashMap<MapData, FlowKey, FlowState>,
}

/// What the table holds right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowOccupancy {
    /// Entries still in their timeout: replies to these pass.
    pub live: u32,
    /// Entries present (live or expired, awaiting eviction).
    pub present: u32,
    pub capacity: u32,
}

/// One flow, readably.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub peer: IpAddr,
    pub protocol: u8,
    pub local_port: u16,
    pub peer_port: u16,
}

impl Flow {
    pub fn key(&self) -> FlowKey {
        let (peer, family) = match self.peer {
            IpAddr::V4(v4) => {
                let mut peer = [0u8; 16];
                peer[..4].copy_from_slice(&v4.octets());
                (peer, FLOW_FAMILY_V4)
            }
            IpAddr::V6(v6) => (v6.octets(), airlock_common::FLOW_FAMILY_V6),
        };
        FlowKey {
            peer,
            local_port: self.local_port,
            peer_port: self.peer_port,
            protocol: self.protocol,
            family,
            _pad: [0; 2],
        }
    }

    fn from_key(key: &FlowKey) -> Self {
        let peer = if key.family == FLOW_FAMILY_V4 {
            IpAddr::from([key.peer[0], key.peer[1], key.peer[2], key.peer[3]])
        } else {
            IpAddr::from(key.peer)
        };
        Flow {
            peer,
            protocol: key.protocol,
            local_port: key.local_port,
            peer_port: key.peer_port,
        }
    }
}

fn map_error(source: aya::maps::MapError) -> LoaderError {
    LoaderError::Map {
        name: MAP_FLOWS,
        source,
    }
}

impl FlowTable {
    pub fn open_pinned(dir: &Path) -> Result<Self, LoaderError> {
        let data = MapData::from_pin(dir.join(MAP_FLOWS)).map_err(map_error)?;
        let map = Map::from_map_data(data).map_err(map_error)?;
        Ok(Self {
            map: map.try_into().map_err(map_error)?,
        })
    }

    /// The table of a loaded, unpinned object (tests).
    pub fn of(ebpf: &mut Ebpf) -> Result<Self, LoaderError> {
        let map = ebpf
            .take_map(MAP_FLOWS)
            .ok_or(LoaderError::MissingMap(MAP_FLOWS))?;
        Ok(Self {
            map: map.try_into().map_err(map_error)?,
        })
    }

    /// Flows present with their expiry (`CLOCK_MONOTONIC` nanoseconds, the clock
    /// of `bpf_ktime_get_ns`).
    pub fn flows(&self) -> Result<Vec<(Flow, FlowState)>, LoaderError> {
        self.map
            .iter()
            .map(|entry| {
                entry
                    .map(|(key, state)| (Flow::from_key(&key), state))
                    .map_err(map_error)
            })
            .collect()
    }

    pub fn occupancy(&self) -> Result<FlowOccupancy, LoaderError> {
        let now = monotonic_ns();
        let mut occupancy = FlowOccupancy {
            capacity: FLOW_TABLE_ENTRIES,
            ..FlowOccupancy::default()
        };
        for (_, state) in self.flows()? {
            occupancy.present += 1;
            if state.expires_ns > now {
                occupancy.live += 1;
            }
        }
        Ok(occupancy)
    }

    /// Writes an entry as the egress program would (tests of the XDP side).
    pub fn insert(&mut self, flow: &Flow, expires_ns: u64) -> Result<(), LoaderError> {
        let state = FlowState {
            expires_ns,
            closing: 0,
            _pad: 0,
        };
        self.map.insert(flow.key(), state, 0).map_err(map_error)
    }

    pub fn clear(&mut self) -> Result<(), LoaderError> {
        let keys: Vec<FlowKey> = self.map.keys().filter_map(Result::ok).collect();
        for key in keys {
            self.map.remove(&key).map_err(map_error)?;
        }
        Ok(())
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock the programs' timestamps use.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; 0 would only count every flow as live.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
    })
}
