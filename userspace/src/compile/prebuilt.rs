//! A compiled policy's source tables, planned ahead of the write that lays
//! them out.
//!
//! An apply's compile ([`super::compile_for_apply`]) plans each family's table
//! (its ranges and classes, [`ranges::plan`]) on the thread that folded it, as
//! soon as it is folded; the loader takes the plans ([`Prebuilt::take_or_plan`])
//! and lays the elements out, straight into the map where they fit. Nothing else
//! changes: a plan is a pure function of the compiled entries, a plan that
//! failed fails the write at the same point (before its first write), and a
//! loader that finds none (a dry run's compile, a policy kept after its apply, a
//! copy) plans its own.

use std::sync::{Mutex, PoisonError};

use airlock_common::{SourceRangeV4, SourceRangeV6};

use super::ranges::{self, Plan, PlanError};

use super::{Compiled, PrefixEntry};

/// Both families' plans, as [`plan_tables`] makes them.
pub type Plans = Result<(Plan<SourceRangeV4>, Plan<SourceRangeV6>), PlanError>;

/// Both families' tables of `v4` and `v6` built from scratch, each made to fit
/// `capacity` elements of its preallocated map if it can: what the plans must
/// lay out (tests only; an apply lays out its plans, [`Prebuilt::take_or_plan`]).
#[cfg(test)]
pub(crate) fn build_tables(
    v4: &[PrefixEntry<4>],
    v6: &[PrefixEntry<16>],
    capacity: (usize, usize),
) -> Result<
    (
        ranges::SourceTable<SourceRangeV4>,
        ranges::SourceTable<SourceRangeV6>,
    ),
    PlanError,
> {
    Ok((
        ranges::table(v4, capacity.0)?,
        ranges::table(v6, capacity.1)?,
    ))
}

/// Both families' plans of `v4` and `v6`, made side by side.
pub fn plan_tables(v4: &[PrefixEntry<4>], v6: &[PrefixEntry<16>]) -> Plans {
    let (v4, v6) = crate::parallel::join(|| ranges::plan(v4), || ranges::plan(v6));
    Ok((v4?, v6?))
}

/// The slot the plans go into: a cache of a pure function of the policy it
/// belongs to, so it takes no part in comparing or copying one. Taken once: a
/// policy kept after its apply (the agent's) holds no plans.
#[derive(Default)]
pub struct Prebuilt {
    slot: Mutex<Option<Box<Plans>>>,
}

impl Prebuilt {
    /// Plans already made (`compile_for_apply`), for the loader to take.
    pub(super) fn ready(
        v4: Result<Plan<SourceRangeV4>, PlanError>,
        v6: Result<Plan<SourceRangeV6>, PlanError>,
    ) -> Prebuilt {
        let plans = Box::new(v4.and_then(|v4| Ok((v4, v6?))));
        Prebuilt {
            slot: Mutex::new(Some(plans)),
        }
    }

    /// `compiled`'s plans: those made ahead, or made here.
    pub fn take_or_plan(compiled: &Compiled) -> Plans {
        match compiled.prebuilt.take() {
            Some(plans) => *plans,
            None => plan_tables(&compiled.v4, &compiled.v6),
        }
    }

    /// Drops whatever was made and not taken.
    pub fn close(compiled: &Compiled) {
        drop(compiled.prebuilt.take());
    }

    fn take(&self) -> Option<Box<Plans>> {
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
    /// A copy of a policy starts with no plans: they are made again on demand.
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

    /// The plans taken are those planned in place, whether made ahead or not,
    /// and lay out the tables a build in place makes; once taken, or closed,
    /// nothing is held any more.
    #[test]
    fn plans_taken_are_the_plans_made_in_place() {
        const CAPACITY: (usize, usize) = (1 << 20, 1 << 17);
        let want = |c: &Compiled| plan_tables(&c.v4, &c.v6).unwrap();
        let plain = || super::super::compile(&policy()).unwrap();
        let ahead = || super::super::compile_for_apply(&policy()).unwrap();
        // Not made ahead: made here.
        let c = plain();
        assert!(!c.prebuilt.holds_tables());
        assert_eq!(Prebuilt::take_or_plan(&c).unwrap(), want(&c));
        // Made ahead: taken, and not held after.
        let c = ahead();
        assert!(c.prebuilt.holds_tables());
        let (v4, v6) = Prebuilt::take_or_plan(&c).unwrap();
        assert_eq!((v4.clone(), v6.clone()), want(&c));
        assert!(!c.prebuilt.holds_tables(), "nothing held after the take");
        // Laid out, for either capacity, they are the tables built in place.
        for capacity in [CAPACITY, (0, 0)] {
            assert_eq!(
                (
                    v4.clone().into_table(capacity.0),
                    v6.clone().into_table(capacity.1)
                ),
                build_tables(&c.v4, &c.v6, capacity).unwrap()
            );
        }
        // Made and never taken: closing lets it go.
        let c = ahead();
        Prebuilt::close(&c);
        assert!(!c.prebuilt.holds_tables());
        // A copy of the policy holds none, and compares equal.
        let c = ahead();
        assert!(!c.clone().prebuilt.holds_tables());
        assert_eq!(c.clone(), c);
    }
}
