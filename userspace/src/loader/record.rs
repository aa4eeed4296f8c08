//! Each generation's record: a compact copy, kept in the filter's own pinned `RECORD`
//! map, of exactly what the loader last wrote into that generation's tries and port
//! arrays. The next apply into that generation compares the new policy with the
//! record and writes only the difference, instead of reading the tries back (the
//! kernel walks an LPM trie for every key it lists, about 0.8 µs a key: more than a
//! second for a million-prefix policy, whose other generation it must walk too).
//!
//! Why the record can be trusted: it is only ever valid for a generation whose maps
//! hold exactly it. The loader removes a generation's record header *before* it
//! changes anything in that generation, and writes the header (with a digest of the
//! record's bytes) only *after* every write into the generation succeeded. So a
//! crashed or failed apply leaves no header, and the next apply falls back to reading
//! the kernel's tries, which heals the copy whatever it holds. A header whose digest
//! does not match the bytes read is treated the same way. Only the loader writes
//! these maps (a loader with another map layout refuses to, see `LAYOUT_VERSION`).

use airlock_common::{RECORD_CHUNK_BYTES, RECORD_SLOTS, SourceEntry, record_key};
use aya::maps::{HashMap, MapData, MapError};

use crate::compile::{Compiled, PrefixEntry};

pub(crate) type RecordMap = HashMap<MapData, u32, [u8; RECORD_CHUNK_BYTES]>;

const MAGIC: u32 = u32::from_le_bytes(*b"ALR1");

/// What a generation holds, as the loader last wrote it completely.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub v4: Vec<PrefixEntry<4>>,
    pub v6: Vec<PrefixEntry<16>>,
    pub tcp: Vec<(u16, u16, u64)>,
    pub udp: Vec<(u16, u16, u64)>,
}

/// What a generation is about to hold, as [`write`] records it.
pub(crate) struct Content<'a> {
    pub v4: &'a [PrefixEntry<4>],
    pub v6: &'a [PrefixEntry<16>],
    pub tcp: &'a [(u16, u16, u64)],
    pub udp: &'a [(u16, u16, u64)],
}

impl<'a> Content<'a> {
    pub(crate) const EMPTY: Content<'static> = Content {
        v4: &[],
        v6: &[],
        tcp: &[],
        udp: &[],
    };

    pub(crate) fn of(compiled: &'a Compiled) -> Self {
        Content {
            v4: &compiled.v4,
            v6: &compiled.v6,
            tcp: compiled.tcp_ports.segments(),
            udp: compiled.udp_ports.segments(),
        }
    }
}

struct Header {
    len: u64,
    digest: u64,
}

impl Header {
    fn chunks(&self) -> u32 {
        self.len.div_ceil(RECORD_CHUNK_BYTES as u64) as u32
    }

    fn encode(&self) -> [u8; RECORD_CHUNK_BYTES] {
        let mut out = [0u8; RECORD_CHUNK_BYTES];
        out[..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[8..16].copy_from_slice(&self.len.to_le_bytes());
        out[16..24].copy_from_slice(&self.digest.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; RECORD_CHUNK_BYTES]) -> Option<Self> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.u32()? != MAGIC {
            return None;
        }
        reader.u32()?;
        Some(Header {
            len: reader.u64()?,
            digest: reader.u64()?,
        })
    }
}

/// Whether `error` says the key is not in the map (aya reports a missing key to
/// `get` as `KeyNotFound`, to `remove` as the system call's ENOENT).
pub(crate) fn not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn header(map: &RecordMap, generation: u32) -> Result<Option<Header>, MapError> {
    match map.get(&record_key(generation, 0), 0) {
        Ok(bytes) => Ok(Header::decode(&bytes)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The record of `generation`, if it has a valid one whose bytes match its digest.
pub(crate) fn read(map: &RecordMap, generation: u32) -> Result<Option<Held>, MapError> {
    let Some(header) = header(map, generation)? else {
        return Ok(None);
    };
    if header.len > u64::from(RECORD_SLOTS) * RECORD_CHUNK_BYTES as u64 {
        return Ok(None);
    }
    let mut payload = Vec::with_capacity(header.len as usize);
    for index in 1..=header.chunks() {
        match map.get(&record_key(generation, index), 0) {
            Ok(chunk) => {
                let take = (header.len as usize - payload.len()).min(RECORD_CHUNK_BYTES);
                payload.extend_from_slice(&chunk[..take]);
            }
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    if digest(&payload) != header.digest {
        tracing::warn!(
            generation,
            "policy record does not match its digest; ignoring it"
        );
        return Ok(None);
    }
    Ok(decode(&payload))
}

/// Makes `generation`'s record invalid: called before anything in the generation
/// changes. Returns how many chunks it had, for [`write`] to clean up.
pub(crate) fn invalidate(map: &mut RecordMap, generation: u32) -> Result<Option<u32>, MapError> {
    let old = header(map, generation)?.map(|h| h.chunks());
    match map.remove(&record_key(generation, 0)) {
        Ok(()) => Ok(old),
        Err(e) if not_found(&e) => Ok(old),
        Err(e) => Err(e),
    }
}

/// Records that `generation` now holds `content` exactly: called after every write into
/// the generation succeeded. `old_chunks`: what [`invalidate`] returned (`None`:
/// unknown, so look for leftovers).
pub(crate) fn write(
    map: &mut RecordMap,
    generation: u32,
    content: &Content<'_>,
    old_chunks: Option<u32>,
) -> Result<(), MapError> {
    let payload = encode(content);
    let header = Header {
        len: payload.len() as u64,
        digest: digest(&payload),
    };
    let mut chunk = [0u8; RECORD_CHUNK_BYTES];
    for (index, bytes) in (1u32..).zip(payload.chunks(RECORD_CHUNK_BYTES)) {
        chunk[..bytes.len()].copy_from_slice(bytes);
        chunk[bytes.len()..].fill(0);
        map.insert(record_key(generation, index), chunk, 0)?;
    }
    let chunks = header.chunks();
    let leftovers: Vec<u32> = match old_chunks {
        Some(old) => (chunks + 1..=old)
            .map(|i| record_key(generation, i))
            .collect(),
        None => map
            .keys()
            .filter_map(Result::ok)
            .filter(|&key| key >> 24 == generation && key & 0xff_ffff > chunks)
            .collect(),
    };
    for key in leftovers {
        match map.remove(&key) {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    // Last: the record is valid from here on.
    map.insert(record_key(generation, 0), header.encode(), 0)
}

/// A stable 64-bit digest (not for adversaries: only root writes the maps; it
/// catches a record whose chunks are not the ones its header was written with).
fn digest(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = 0x243f_6a88_85a3_08d3 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
        h ^= h >> 32;
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(K);
        h ^= h >> 32;
    }
    h
}

// Layout: the distinct values (u32 count, then rules u64 + flags u32 each), the IPv4
// entries (u32 count, then address, length and value index u32 each), the IPv6
// entries likewise, then the TCP and UDP port segments (u32 count, first u16, last
// u16, mask u64 each). Little-endian.

fn encode(content: &Content<'_>) -> Vec<u8> {
    let Content { v4, v6, tcp, udp } = *content;
    let mut values: Vec<SourceEntry> = v4
        .iter()
        .map(|e| e.value)
        .chain(v6.iter().map(|e| e.value))
        .collect();
    values.sort_unstable();
    values.dedup();
    let index = |value: &SourceEntry| values.binary_search(value).unwrap_or_default() as u32;
    let mut out = Vec::with_capacity(
        16 + values.len() * 12 + v4.len() * 9 + v6.len() * 21 + 12 * (tcp.len() + udp.len()),
    );
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for value in &values {
        out.extend_from_slice(&value.rules.to_le_bytes());
        out.extend_from_slice(&value.flags.to_le_bytes());
    }
    fn entries<const N: usize>(
        out: &mut Vec<u8>,
        entries: &[PrefixEntry<N>],
        index: impl Fn(&SourceEntry) -> u32,
    ) {
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for entry in entries {
            out.extend_from_slice(&entry.addr);
            out.push(entry.prefix_len);
            out.extend_from_slice(&index(&entry.value).to_le_bytes());
        }
    }
    entries(&mut out, v4, index);
    entries(&mut out, v6, index);
    for segments in [tcp, udp] {
        out.extend_from_slice(&(segments.len() as u32).to_le_bytes());
        for &(first, last, mask) in segments.iter() {
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&last.to_le_bytes());
            out.extend_from_slice(&mask.to_le_bytes());
        }
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let slice = self.bytes.get(self.at..self.at + N)?;
        self.at += N;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take()?))
    }
    /// A count of items of `size` bytes each that the rest of the input can hold.
    fn count(&mut self, size: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.checked_mul(size)? <= self.bytes.len() - self.at).then_some(n)
    }
}

fn decode(payload: &[u8]) -> Option<Held> {
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    let n = r.count(12)?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        values.push(SourceEntry {
            rules: r.u64()?,
            flags: r.u32()?,
            _pad: 0,
        });
    }
    fn entries<const N: usize>(
        r: &mut Reader<'_>,
        values: &[SourceEntry],
    ) -> Option<Vec<PrefixEntry<N>>> {
        let n = r.count(N + 5)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let addr = r.take::<N>()?;
            let prefix_len = r.u8()?;
            let value = *values.get(r.u32()? as usize)?;
            out.push(PrefixEntry {
                addr,
                prefix_len,
                value,
            });
        }
        Some(out)
    }
    let v4 = entries::<4>(&mut r, &values)?;
    let v6 = entries::<16>(&mut r, &values)?;
    let mut ports = [Vec::new(), Vec::new()];
    for segments in &mut ports {
        let n = r.count(12)?;
        for _ in 0..n {
            segments.push((r.u16()?, r.u16()?, r.u64()?));
        }
    }
    let [tcp, udp] = ports;
    (r.at == payload.len()).then_some(Held { v4, v6, tcp, udp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let value = |rules, flags| SourceEntry {
            rules,
            flags,
            _pad: 0,
        };
        let held = Held {
            v4: vec![
                PrefixEntry {
                    addr: [10, 0, 0, 0],
                    prefix_len: 8,
                    value: value(1, 0),
                },
                PrefixEntry {
                    addr: [192, 0, 2, 7],
                    prefix_len: 32,
                    value: value(0, 2),
                },
            ],
            v6: vec![PrefixEntry {
                addr: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                prefix_len: 32,
                value: value(3, 1),
            }],
            tcp: vec![(22, 22, 1), (8000, 8100, 3)],
            udp: vec![],
        };
        let bytes = encode(&Content {
            v4: &held.v4,
            v6: &held.v6,
            tcp: &held.tcp,
            udp: &held.udp,
        });
        assert_eq!(decode(&bytes), Some(held));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_ne!(digest(&bytes), digest(&bytes[1..]));
    }
}
