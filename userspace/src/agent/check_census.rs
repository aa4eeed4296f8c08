//! The self-check's findings for `/metrics`, computed at most once per
//! [`MAX_AGE`] on a thread of their own: judging reach walks the policy's sets
//! (a million imported prefixes make that milliseconds per socket), which a scrape
//! must not pay for. A scrape reports the last result (none before the first).

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use crate::{
    check::{self, Finding},
    loader::PinRoot,
    policy::Policy,
};

/// How old a result a scrape may report.
pub const MAX_AGE: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct CheckCensus {
    root: PinRoot,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last: Option<(Instant, Vec<Finding>)>,
    /// The policy the last result judged by (a new one makes it stale).
    judged: Option<Arc<Policy>>,
    running: bool,
}

impl CheckCensus {
    pub fn new(root: PinRoot) -> Arc<Self> {
        Arc::new(Self {
            root,
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last findings; starts a new check when they are older than
    /// [`MAX_AGE`] or were judged by another policy.
    pub fn get(self: &Arc<Self>, policy: Option<&Arc<Policy>>) -> Vec<Finding> {
        let (findings, stale) = {
            let inner = self.lock();
            let same = match (&inner.judged, policy) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            match &inner.last {
                Some((at, findings)) => (findings.clone(), !same || at.elapsed() > MAX_AGE),
                None => (Vec::new(), true),
            }
        };
        if stale {
            self.run(policy.cloned());
        }
        findings
    }

    fn run(self: &Arc<Self>, policy: Option<Arc<Policy>>) {
        {
            let mut inner = self.lock();
            if inner.running {
                return;
            }
            inner.running = true;
        }
        let census = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("check-census".into())
            .spawn(move || {
                let report = check::model_only(
                    &census.root,
                    policy.as_deref(),
                    check::DEFAULT_REGION_MAX_AGE,
                );
                let mut inner = census.lock();
                if let Some(report) = report {
                    inner.last = Some((Instant::now(), report.findings));
                    inner.judged = policy;
                }
                inner.running = false;
            });
        if started.is_err() {
            self.lock().running = false;
        }
    }
}
