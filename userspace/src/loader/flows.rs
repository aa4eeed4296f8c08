//! The return-traffic flow table as user space sees it: how full it is (for
//! `status`), and direct access for tests. The kernel side (ebpf-programs/src/flows.rs)
//! says what the table is for and why it is filled only by the egress program.

use std::{
    net::IpAddr,
    os::fd::AsFd as _,
    path::Path,
    sync::atomic::{AtomicU8, AtomicU64, Ordering},
};

use airlock_common::{
    FLOW_EPOCH_SLOTS, FLOW_FAMILY_V4, FLOW_FAMILY_V6, FLOW_PORT_BLOCK_BYTES, FLOW_PORT_BLOCKS,
    FLOW_TABLE_ENTRIES, FlowKey, FlowState, MAP_FLOW_EPOCHS, MAP_FLOW_PORTS, MAP_FLOWS,
    flow_epoch_slot, flow_port_byte,
};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData},
};

use super::LoaderError;

pub struct FlowTable {
    map: HashMap<MapData, FlowKey, FlowState>,
    /// `FLOW_EPOCHS`: bumped after every write here, as the egress program bumps
    /// it after a change, so the XDP program's memory of replies never outlives
    /// an entry user space shortened. `None` in a filter pinned before layout 7,
    /// whose program remembers no replies.
    epochs: Option<MapData>,
    /// `FLOW_PORTS`: a flow's port is marked here before its entry is written,
    /// as the egress program does, or the XDP program would never look the entry
    /// up. `None` in a filter pinned before layout 8, which has no such filter.
    ports: Option<MapData>,
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

const IPPROTO_TCP: u8 = 6;

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
            IpAddr::V6(v6) => (v6.octets(), FLOW_FAMILY_V6),
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

fn epochs_error(source: aya::maps::MapError) -> LoaderError {
    LoaderError::Map {
        name: MAP_FLOW_EPOCHS,
        source,
    }
}

fn ports_error(source: aya::maps::MapError) -> LoaderError {
    LoaderError::Map {
        name: MAP_FLOW_PORTS,
        source,
    }
}

/// A pinned map that older layouts lack: `None` where it is absent.
fn optional_pin(
    dir: &Path,
    name: &'static str,
    read_only: bool,
    error: fn(aya::maps::MapError) -> LoaderError,
) -> Result<Option<MapData>, LoaderError> {
    let pin = super::pins::pinned_path(dir, name)?;
    // Only "not found" means an older layout; any other failure to look is an error,
    // never a map taken for absent.
    match std::fs::symlink_metadata(&pin) {
        Ok(_) => Ok(Some(super::pins::open_map(&pin, read_only).map_err(error)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LoaderError::Io {
            op: "stat",
            path: pin,
            source,
        }),
    }
}

impl FlowTable {
    pub fn open_pinned(dir: &Path) -> Result<Self, LoaderError> {
        Self::open(dir, false)
    }

    /// [`open_pinned`](Self::open_pinned) for reading only (`status`: works on a
    /// read-only bpffs).
    pub fn open_pinned_read_only(dir: &Path) -> Result<Self, LoaderError> {
        Self::open(dir, true)
    }

    fn open(dir: &Path, read_only: bool) -> Result<Self, LoaderError> {
        let open = super::pins::open_map;
        let data =
            open(&super::pins::pinned_path(dir, MAP_FLOWS)?, read_only).map_err(map_error)?;
        let map = Map::from_map_data(data).map_err(map_error)?;
        Ok(Self {
            map: map.try_into().map_err(map_error)?,
            epochs: optional_pin(dir, MAP_FLOW_EPOCHS, read_only, epochs_error)?,
            ports: optional_pin(dir, MAP_FLOW_PORTS, read_only, ports_error)?,
        })
    }

    /// The table of a loaded, unpinned object (tests).
    pub fn of(ebpf: &mut Ebpf) -> Result<Self, LoaderError> {
        let map = ebpf
            .take_map(MAP_FLOWS)
            .ok_or(LoaderError::MissingMap(MAP_FLOWS))?;
        let Some(Map::Array(epochs)) = ebpf.take_map(MAP_FLOW_EPOCHS) else {
            return Err(LoaderError::MissingMap(MAP_FLOW_EPOCHS));
        };
        let Some(Map::Array(ports)) = ebpf.take_map(MAP_FLOW_PORTS) else {
            return Err(LoaderError::MissingMap(MAP_FLOW_PORTS));
        };
        Ok(Self {
            map: map.try_into().map_err(map_error)?,
            epochs: Some(epochs),
            ports: Some(ports),
        })
    }

    /// Flows present with their expiry (`CLOCK_MONOTONIC` nanoseconds, the clock
    /// of `bpf_ktime_get_ns`).
    ///
    /// A walk of the live table: an entry evicted or deleted while it runs is
    /// skipped, and since the kernel restarts a walk whose current key vanished, it
    /// stops after as many entries as the table holds.
    pub fn flows(&self) -> Result<Vec<(Flow, FlowState)>, LoaderError> {
        let mut flows = Vec::new();
        for entry in self.map.iter().take(FLOW_TABLE_ENTRIES as usize) {
            match entry {
                Ok((key, state)) => flows.push((Flow::from_key(&key), state)),
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(error) => return Err(map_error(error)),
            }
        }
        Ok(flows)
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

    /// Writes `flow` as open until `expires_ns`, as the egress program does on the
    /// host's SYN.
    pub fn insert_open(&mut self, flow: &Flow, expires_ns: u64) -> Result<(), LoaderError> {
        let key = flow.key();
        self.mark_ports(&[key])?;
        self.map
            .insert(key, open_until(expires_ns), 0)
            .map_err(map_error)?;
        self.invalidate_replies(&[key])
    }

    /// Marks the local ports of `keys` in `FLOW_PORTS` (mmapable, mapped once), as
    /// the egress program does before it writes an entry.
    fn mark_ports(&self, keys: &[FlowKey]) -> Result<(), LoaderError> {
        let bytes = FLOW_PORT_BLOCKS as usize * FLOW_PORT_BLOCK_BYTES;
        write_mapped(self.ports.as_ref(), MAP_FLOW_PORTS, bytes, |memory| {
            for key in keys {
                let Some((block, byte)) = flow_port_byte(key.protocol, key.local_port) else {
                    continue;
                };
                let offset = block as usize * FLOW_PORT_BLOCK_BYTES + byte;
                // SAFETY: `offset` < the mapping's length by construction
                // (`flow_port_byte`); the program reads and writes single bytes.
                unsafe { AtomicU8::from_ptr(memory.add(offset)).store(1, Ordering::Release) };
            }
        })
    }

    /// Moves the counters of `keys` in `FLOW_EPOCHS` on (mapped once), atomically
    /// as the egress program does.
    fn invalidate_replies(&self, keys: &[FlowKey]) -> Result<(), LoaderError> {
        let bytes = FLOW_EPOCH_SLOTS as usize * size_of::<u64>();
        write_mapped(self.epochs.as_ref(), MAP_FLOW_EPOCHS, bytes, |memory| {
            for key in keys {
                let slot = flow_epoch_slot(key) as usize;
                // SAFETY: `slot` < FLOW_EPOCH_SLOTS, inside the mapping; the kernel
                // maps array values 8-byte aligned; other writers use atomics too.
                unsafe {
                    AtomicU64::from_ptr(memory.cast::<u64>().add(slot))
                        .fetch_add(1, Ordering::Relaxed)
                };
            }
        })
    }
}

/// An open flow's entry, until `expires_ns`.
fn open_until(expires_ns: u64) -> FlowState {
    FlowState {
        expires_ns,
        closing: 0,
        _pad: 0,
    }
}

/// Runs `write` on a writable mapping of the first `bytes` of `map`, an mmapable
/// array; nothing where the pinned filter predates the map.
fn write_mapped(
    map: Option<&MapData>,
    name: &'static str,
    bytes: usize,
    write: impl FnOnce(*mut u8),
) -> Result<(), LoaderError> {
    let Some(map) = map else {
        return Ok(());
    };
    super::mapping::with_mapping(map.fd().as_fd(), bytes, true, |memory| {
        write(memory.as_ptr().cast())
    })
    .map_err(|error| LoaderError::Io {
        op: "mapping",
        path: name.into(),
        source: error,
    })
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock the programs' timestamps use.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; 0 would only count every flow as live.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
    })
}

/// Writes the TCP connections the host opened (from the socket table) into the
/// flow table in `dir`, where absent: the egress program only creates a TCP flow
/// from the host's SYN, so one opened before it could see the SYN, or evicted from
/// a full table, is only known here. Best effort: a connection missed here loses
/// its replies under `default: drop`, so failures are logged, not fatal.
pub fn seed_from_socket_table(dir: &Path) {
    let mut table = match FlowTable::open_pinned(dir) {
        Ok(table) => table,
        Err(error) => {
            tracing::warn!(%error, "cannot open the flow table to seed it");
            return;
        }
    };
    let sockets = crate::sockets::read();
    let expires = monotonic_ns() + airlock_common::TCP_TIMEOUT_NS;
    // Where the egress program already tracks a connection, its state is the
    // better one: only absent ones are written.
    let absent: Vec<FlowKey> = crate::sockets::opened_by_host(&sockets)
        .map(|socket| {
            Flow {
                peer: socket.peer,
                protocol: IPPROTO_TCP,
                local_port: socket.local_port,
                peer_port: socket.peer_port,
            }
            .key()
        })
        .filter(|key| table.map.get(key, 0).is_err())
        .collect();
    // Ports first (one mapping for all), so no entry is ever written unmarked.
    if let Err(error) = table.mark_ports(&absent) {
        tracing::warn!(%error, "seeding the flow table");
        return;
    }
    let mut written = Vec::with_capacity(absent.len());
    for key in absent {
        match table.map.insert(key, open_until(expires), 0) {
            Ok(()) => written.push(key),
            Err(error) => {
                let flow = Flow::from_key(&key);
                tracing::warn!(error = %map_error(error), ?flow, "seeding the flow table");
            }
        }
    }
    if let Err(error) = table.invalidate_replies(&written) {
        tracing::warn!(%error, "seeding the flow table");
    }
    let seeded = written.len();
    if seeded > 0 {
        tracing::info!(
            seeded,
            "connections the host opened earlier keep their replies"
        );
    }
}
