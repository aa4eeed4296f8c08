//! A compiled policy's source tables, built ahead of the write that needs them.
//!
//! An apply builds the two tables (`ranges::table`) only once it has checked the
//! interfaces, opened the pinned maps and found where to write: a millisecond or
//! two of system calls during which the tables could already be in the making.
//! [`Prebuilt::build`] makes them on a thread of the caller's, beside those
//! steps; the loader then takes them ([`Prebuilt::take_or_build`]) where it
//! used to build them, waiting for a build under way. Nothing else changes: the
//! tables are a pure function of the compiled entries and the capacity, a build
//! that failed fails the write at the same point (before its first write), and a
//! loader that finds none, or one for another capacity, builds its own.

use std::sync::{Condvar, Mutex, PoisonError};

use airlock_common::{SourceRangeV4, SourceRangeV6};

use super::ranges::{self, SourceTable, TooManyClasses};
use super::{Compiled, PrefixEntry};

/// Both families' tables, as one build of [`build_tables`] makes them.
pub type Tables = Result<(SourceTable<SourceRangeV4>, SourceTable<SourceRangeV6>), TooManyClasses>;

/// Both families' tables of `v4` and `v6`, each made to fit `capacity` elements
/// of its preallocated map if it can, built side by side.
pub fn build_tables(
    v4: &[PrefixEntry<4>],
    v6: &[PrefixEntry<16>],
    capacity: (usize, usize),
) -> Tables {
    let (v4, v6) = crate::parallel::join(
        || ranges::table(v4, capacity.0),
        || ranges::table(v6, capacity.1),
    );
    Ok((v4?, v6?))
}

/// The slot the tables go into: a cache of a pure function of the policy it
/// belongs to, so it takes no part in comparing or copying one. Taken once: a
/// policy kept after its apply (the agent's) holds no tables.
#[derive(Default)]
pub struct Prebuilt {
    slot: Mutex<Slot>,
    done: Condvar,
}

#[derive(Default)]
enum Slot {
    #[default]
    Empty,
    Building,
    Built {
        capacity: (usize, usize),
        tables: Box<Tables>,
    },
    /// Taken, or given up on: no build starts any more.
    Closed,
}

impl Prebuilt {
    /// Tables already made for `capacity` (`compile_for_apply`), for the
    /// loader to take.
    pub(super) fn ready(
        capacity: (usize, usize),
        v4: Result<SourceTable<SourceRangeV4>, TooManyClasses>,
        v6: Result<SourceTable<SourceRangeV6>, TooManyClasses>,
    ) -> Prebuilt {
        let tables = Box::new(v4.and_then(|v4| Ok((v4, v6?))));
        Prebuilt {
            slot: Mutex::new(Slot::Built { capacity, tables }),
            done: Condvar::new(),
        }
    }

    /// Builds `compiled`'s tables for `capacity` into its slot, unless they are
    /// there, being built, or no longer wanted.
    pub fn build(compiled: &Compiled, capacity: (usize, usize)) {
        let this = &compiled.prebuilt;
        {
            let mut slot = this.lock();
            if !matches!(*slot, Slot::Empty) {
                return;
            }
            *slot = Slot::Building;
        }
        // Should the build panic, the slot is emptied again (a waiter then builds).
        let unbuilt = Unbuilt(this);
        let tables = Box::new(build_tables(&compiled.v4, &compiled.v6, capacity));
        std::mem::forget(unbuilt);
        let mut slot = this.lock();
        *slot = Slot::Built { capacity, tables };
        drop(slot);
        this.done.notify_all();
    }

    /// `compiled`'s tables for `capacity`: those built ahead (waiting for a build
    /// under way), or built here. No build starts after this.
    pub fn take_or_build(compiled: &Compiled, capacity: (usize, usize)) -> Tables {
        match compiled.prebuilt.take() {
            Slot::Built {
                capacity: built_for,
                tables,
            } if built_for == capacity => *tables,
            _ => build_tables(&compiled.v4, &compiled.v6, capacity),
        }
    }

    /// Drops whatever was built and not taken, and keeps any build from starting
    /// (waiting for one under way).
    pub fn close(compiled: &Compiled) {
        drop(compiled.prebuilt.take());
    }

    /// What the slot holds, once no build is under way (waiting for one), leaving
    /// it closed.
    fn take(&self) -> Slot {
        let mut slot = self.lock();
        while matches!(*slot, Slot::Building) {
            slot = self.done.wait(slot).unwrap_or_else(PoisonError::into_inner);
        }
        std::mem::replace(&mut *slot, Slot::Closed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Empties the slot of a build that did not finish (a panic).
struct Unbuilt<'a>(&'a Prebuilt);

impl Drop for Unbuilt<'_> {
    fn drop(&mut self) {
        *self.0.lock() = Slot::Empty;
        self.0.done.notify_all();
    }
}

impl Clone for Prebuilt {
    /// A copy of a policy starts with no tables: they are made again on demand.
    fn clone(&self) -> Self {
        Prebuilt::default()
    }
}

impl PartialEq for Prebuilt {
    /// Two policies are equal by their contents, whatever is cached of them.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Prebuilt {}

impl std::fmt::Debug for Prebuilt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prebuilt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    fn compiled() -> Compiled {
        let text = "version: 1\ninterfaces: [eth0]\nrules:\n  - {name: a, ports: [22], from: [192.0.2.0/24, 2001:db8::/48]}\n  - {name: b, ports: [80], from: [198.51.100.7, 192.0.2.128/25]}\n";
        let policy = policy::parse_str(text, std::path::Path::new("p.yaml")).unwrap();
        super::super::compile(&policy).unwrap()
    }

    /// The tables taken are those a build in place makes, whether built ahead,
    /// built ahead for another capacity, or not built ahead at all; once taken,
    /// or closed, nothing is built or held any more.
    #[test]
    fn tables_taken_are_the_tables_built_in_place() {
        const CAPACITY: (usize, usize) = (1 << 20, 1 << 17);
        let want = |c: &Compiled, capacity| build_tables(&c.v4, &c.v6, capacity).unwrap();
        let c = compiled();
        assert_eq!(
            Prebuilt::take_or_build(&c, CAPACITY).unwrap(),
            want(&c, CAPACITY)
        );
        Prebuilt::build(&c, CAPACITY);
        assert!(
            matches!(*c.prebuilt.lock(), Slot::Closed),
            "nothing built after the take"
        );
        let c = compiled();
        std::thread::scope(|s| {
            s.spawn(|| Prebuilt::build(&c, CAPACITY));
            assert_eq!(
                Prebuilt::take_or_build(&c, CAPACITY).unwrap(),
                want(&c, CAPACITY)
            );
        });
        // Built for another capacity (a test's chunked tables): built again.
        let c = compiled();
        Prebuilt::build(&c, CAPACITY);
        assert_eq!(
            Prebuilt::take_or_build(&c, (0, 0)).unwrap(),
            want(&c, (0, 0))
        );
        // Built and never taken: closing lets it go.
        let c = compiled();
        Prebuilt::build(&c, CAPACITY);
        assert!(matches!(*c.prebuilt.lock(), Slot::Built { .. }));
        Prebuilt::close(&c);
        assert!(matches!(*c.prebuilt.lock(), Slot::Closed));
        // A copy of the policy holds none, and compares equal.
        assert_eq!(c.clone(), c);
    }
}
