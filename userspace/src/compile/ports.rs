//! Per-protocol port maps: for each destination port, the mask of rules covering it.

/// Port → rule mask, stored as sorted, non-overlapping segments with nonzero masks
/// (ports in no segment have mask 0). Adjacent segments have different masks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortMap {
    segments: Vec<(u16, u16, u64)>,
}

impl PortMap {
    /// Builds the map from `(first, last, rule_bit_index)` ranges.
    pub(crate) fn build(ranges: impl IntoIterator<Item = (u16, u16, u32)>) -> PortMap {
        // Sweep over range boundaries with a per-bit counter, so overlapping ranges of
        // one rule (e.g. 8000/tcp and 7000-9000/tcp) don't cancel each other.
        let mut events: Vec<(u32, u32, bool)> = Vec::new();
        for (first, last, bit) in ranges {
            events.push((u32::from(first), bit, true));
            events.push((u32::from(last) + 1, bit, false));
        }
        events.sort_unstable();
        let mut counts = [0u32; 64];
        let mut mask = 0u64;
        let mut segments: Vec<(u16, u16, u64)> = Vec::new();
        let mut i = 0;
        while i < events.len() {
            let pos = events[i].0;
            while i < events.len() && events[i].0 == pos {
                let (_, bit, start) = events[i];
                let b = (bit & 63) as usize;
                if start {
                    counts[b] += 1;
                } else {
                    counts[b] -= 1;
                }
                if counts[b] > 0 {
                    mask |= 1 << b;
                } else {
                    mask &= !(1 << b);
                }
                i += 1;
            }
            // The segment [pos, next event) has `mask`; ports are <= 65535 inside.
            let Some(&(next, _, _)) = events.get(i) else {
                break;
            };
            if mask == 0 || pos > u32::from(u16::MAX) {
                continue;
            }
            let (first, last) = (pos as u16, (next - 1) as u16);
            match segments.last_mut() {
                Some(prev) if prev.2 == mask && u32::from(prev.1) + 1 == pos => prev.1 = last,
                _ => segments.push((first, last, mask)),
            }
        }
        PortMap { segments }
    }

    /// The mask of rules covering `port` (0 if none).
    pub fn mask_at(&self, port: u16) -> u64 {
        let i = self.segments.partition_point(|&(_, last, _)| last < port);
        match self.segments.get(i) {
            Some(&(first, _, mask)) if first <= port => mask,
            _ => 0,
        }
    }

    /// The segments `(first, last, mask)`, sorted.
    pub fn segments(&self) -> &[(u16, u16, u64)] {
        &self.segments
    }

    /// Writes the map as the kernel's port array into `out` ([`airlock_common::maps::PORT_SLOTS`]
    /// long): each port's slot made from its mask by `slot` (mask 0 where no
    /// rule covers the port).
    pub fn fill_dense<T: Copy>(&self, out: &mut [T], slot: impl Fn(u64) -> T) {
        out.fill(slot(0));
        for &(first, last, mask) in &self.segments {
            out[usize::from(first)..=usize::from(last)].fill(slot(mask));
        }
    }

    /// The map as the kernel's port array of masks, one per port (what a
    /// generation's port slots are read back to).
    pub fn dense(&self) -> Vec<u64> {
        let mut out = vec![0u64; airlock_common::maps::PORT_SLOTS as usize];
        self.fill_dense(&mut out, |mask| mask);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_common::maps::PORT_SLOTS;

    #[test]
    fn segments_merge_and_split() {
        let m = PortMap::build([
            (10, 20, 0),
            (15, 30, 1),
            (31, 40, 1),
            (7000, 9000, 2),
            (8000, 8000, 2),
        ]);
        assert_eq!(
            m.segments(),
            &[(10, 14, 1), (15, 20, 3), (21, 40, 2), (7000, 9000, 4)]
        );
        assert_eq!(m.mask_at(9), 0);
        assert_eq!(m.mask_at(10), 1);
        assert_eq!(m.mask_at(20), 3);
        assert_eq!(m.mask_at(40), 2);
        assert_eq!(m.mask_at(41), 0);
        assert_eq!(m.mask_at(8000), 4);
        let mut dense = vec![u64::MAX; PORT_SLOTS as usize];
        m.fill_dense(&mut dense, |mask| mask);
        for p in 0..=u16::MAX {
            assert_eq!(dense[usize::from(p)], m.mask_at(p));
        }
    }

    #[test]
    fn edges() {
        let m = PortMap::build([(65535, 65535, 63), (1, 1, 0)]);
        assert_eq!(m.segments(), &[(1, 1, 1), (65535, 65535, 1 << 63)]);
        assert_eq!(m.mask_at(65535), 1 << 63);
        assert_eq!(PortMap::build([]).mask_at(80), 0);
    }
}
