//! A compiled policy's source tables, built ahead of the write that needs them.
//!
//! An apply's compile ([`super::compile_for_apply`]) builds each family's table
//! on the thread that folded it, as soon as it is folded; the loader takes them
//! ([`Prebuilt::take_or_build`]) where it would build them. Nothing else
//! changes: the tables are a pure function of the compiled entries and the
//! capacity, a build that failed fails the write at the same point (before its
//! first write), and a loader that finds none (a dry run's compile, a policy
//! kept after its apply, a copy), or one for another capacity, builds its own.

use std::sync::{Mutex, PoisonError};

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
    slot: Mutex<Option<Built>>,
}

struct Built {
    capacity: (usize, usize),
    tables: Box<Tables>,
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
            slot: Mutex::new(Some(Built { capacity, tables })),
        }
    }

    /// `compiled`'s tables for `capacity`: those built ahead, or built here.
    pub fn take_or_build(compiled: &Compiled, capacity: (usize, usize)) -> Tables {
        match compiled.prebuilt.take() {
            Some(Built {
                capacity: built_for,
                tables,
            }) if built_for == capacity => *tables,
            _ => build_tables(&compiled.v4, &compiled.v6, capacity),
        }
    }

    /// Drops whatever was built and not taken.
    pub fn close(compiled: &Compiled) {
        drop(compiled.prebuilt.take());
    }

    fn take(&self) -> Option<Built> {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    #[cfg(test)]
    fn holds_tables(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
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

    fn policy() -> policy::Policy {
        let text = "version: 1\ninterfaces: [eth0]\nrules:\n  - {name: a, ports: [22], from: [192.0.2.0/24, 2001:db8::/48]}\n  - {name: b, ports: [80], from: [198.51.100.7, 192.0.2.128/25]}\n";
        policy::parse_str(text, std::path::Path::new("p.yaml")).unwrap()
    }

    /// The tables taken are those a build in place makes, whether built ahead,
    /// built ahead for another capacity, or not built ahead at all; once taken,
    /// or closed, nothing is held any more.
    #[test]
    fn tables_taken_are_the_tables_built_in_place() {
        const CAPACITY: (usize, usize) = (1 << 20, 1 << 17);
        let want = |c: &Compiled, capacity| build_tables(&c.v4, &c.v6, capacity).unwrap();
        let plain = || super::super::compile(&policy()).unwrap();
        let ahead = || super::super::compile_for_apply(&policy(), CAPACITY).unwrap();
        // Not built ahead: built here.
        let c = plain();
        assert!(!c.prebuilt.holds_tables());
        assert_eq!(
            Prebuilt::take_or_build(&c, CAPACITY).unwrap(),
            want(&c, CAPACITY)
        );
        // Built ahead: taken, and not held after.
        let c = ahead();
        assert!(c.prebuilt.holds_tables());
        assert_eq!(
            Prebuilt::take_or_build(&c, CAPACITY).unwrap(),
            want(&c, CAPACITY)
        );
        assert!(!c.prebuilt.holds_tables(), "nothing held after the take");
        // Built for another capacity (a test's chunked tables): built again.
        let c = ahead();
        assert_eq!(
            Prebuilt::take_or_build(&c, (0, 0)).unwrap(),
            want(&c, (0, 0))
        );
        // Built and never taken: closing lets it go.
        let c = ahead();
        Prebuilt::close(&c);
        assert!(!c.prebuilt.holds_tables());
        // A copy of the policy holds none, and compares equal.
        let c = ahead();
        assert!(!c.clone().prebuilt.holds_tables());
        assert_eq!(c.clone(), c);
    }
}
