//! How full each interface's return-traffic flow table is, for `/metrics`, counted
//! at most once per [`MAX_AGE`] whatever the number of scrapes.
//!
//! Counting walks the table, two system calls per entry (some 150 ms at 65,536
//! flows): done in every scrape, a scrape would cost what the table holds, and a
//! burst of scrapes would queue behind each other. A scrape reads the last count;
//! one older than `MAX_AGE` is counted again on a thread while scrapes go on
//! reading the old one. Only an interface never counted is counted in the scrape.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use crate::loader::{FlowOccupancy, FlowTable, PinRoot};

/// How old a count a scrape may report.
pub const MAX_AGE: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct FlowCensus {
    root: PinRoot,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    counts: BTreeMap<String, (Instant, FlowOccupancy)>,
    counting: bool,
}

fn count(root: &PinRoot, iface: &str) -> Option<FlowOccupancy> {
    FlowTable::open_pinned(&root.interface_dir(iface))
        .and_then(|table| table.occupancy())
        .ok()
}

impl FlowCensus {
    pub fn new(root: PinRoot) -> Arc<Self> {
        Arc::new(Self {
            root,
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The occupancy of `iface`'s table (blocking only the first time it is asked
    /// for). `None` when it has no readable table.
    pub fn get(self: &Arc<Self>, iface: &str) -> Option<FlowOccupancy> {
        let cached = self.lock().counts.get(iface).copied();
        let Some((at, occupancy)) = cached else {
            let occupancy = count(&self.root, iface)?;
            self.lock()
                .counts
                .insert(iface.to_owned(), (Instant::now(), occupancy));
            return Some(occupancy);
        };
        if at.elapsed() > MAX_AGE {
            self.recount();
        }
        Some(occupancy)
    }

    /// Counts every pinned interface again on a thread, unless one already does.
    fn recount(self: &Arc<Self>) {
        {
            let mut inner = self.lock();
            if inner.counting {
                return;
            }
            inner.counting = true;
        }
        let census = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("flow-census".into())
            .spawn(move || {
                let ifaces = census.root.interfaces().unwrap_or_default();
                let counts: BTreeMap<String, (Instant, FlowOccupancy)> = ifaces
                    .into_iter()
                    .filter_map(|iface| {
                        let occupancy = count(&census.root, &iface)?;
                        Some((iface, (Instant::now(), occupancy)))
                    })
                    .collect();
                let mut inner = census.lock();
                // Interfaces gone since are dropped with their counts.
                inner.counts = counts;
                inner.counting = false;
            });
        if started.is_err() {
            self.lock().counting = false;
        }
    }
}
