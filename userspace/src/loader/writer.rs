//! One writer at a time. An apply diffs against its record of what the inactive
//! copy holds (record.rs) and a rollback flips to the other copy; two of them
//! interleaving (a CLI apply beside the agent, a watchdog's rollback during an
//! apply) would leave maps and record disagreeing for good. Every change of the
//! maps or of the pending-confirm state holds this exclusive `flock` on the pin
//! root directory; the functions that need it take it as a parameter, so a caller
//! cannot forget it.

use std::{
    collections::HashSet,
    fs::File,
    io,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    thread::JoinHandle,
};

use nix::fcntl::{Flock, FlockArg};

use super::{LoaderError, PinRoot};

pub struct WriterLock {
    _lock: Flock<File>,
    grace: Mutex<EarlyGrace>,
}

/// An RCU grace period begun once the lock was held ([`WriterLock::acquire_early`]).
#[derive(Default)]
struct EarlyGrace {
    waiting: Option<JoinHandle<bool>>,
    /// Whether it ran to its end (membarrier waited).
    elapsed: bool,
    /// Filters swapped under this lock: their last flip is not covered.
    swapped: HashSet<PathBuf>,
}

impl WriterLock {
    /// Blocks until no other airlock process is changing filters under `root`
    /// (mounting bpffs there first if needed, as an apply would).
    pub fn acquire(root: &PinRoot) -> Result<Self, LoaderError> {
        root.ensure_mounted()?;
        let path = root.path();
        let file = File::open(path).map_err(|e| LoaderError::io("opening", path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            LoaderError::io("locking", path, io::Error::from_raw_os_error(errno as i32))
        })?;
        Ok(Self {
            _lock: lock,
            grace: Mutex::new(EarlyGrace::default()),
        })
    }

    /// As [`acquire`](Self::acquire), and begins an RCU grace period on a thread.
    /// Every flip of every filter was made before the lock was taken, so once it
    /// ends no packet reads a retired copy: a swap under this lock then rewrites it
    /// without waiting again (once per filter). For a caller that compiles while
    /// holding the lock: the wait, some 10-20 ms, passes meanwhile.
    ///
    /// Not begun where every filter has one on record since its last flip: none is
    /// needed, and a process cannot exit while a thread of it waits in `membarrier`.
    pub fn acquire_early(root: &PinRoot) -> Result<Self, LoaderError> {
        let lock = Self::acquire(root)?;
        if !super::grace::passed_for_all(root) {
            lock.grace
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .begin(super::grace::membarrier);
        }
        Ok(lock)
    }

    /// Whether the filter pinned at `dir` may be rewritten without a grace period of
    /// its own: one since its last flip is on record (`on_record`), or one begun
    /// under this lock has ended (this waits for it) and this is the filter's first
    /// swap under it. The swap is noted either way: the flip it ends with comes
    /// after every grace period begun so far.
    pub(crate) fn grace_covers(&self, dir: &Path, on_record: bool) -> bool {
        self.grace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .covers(dir, on_record)
    }
}

impl EarlyGrace {
    /// Runs `wait` (true once a grace period has ended) on a thread of its own; if
    /// the OS refuses one, nothing is covered and every swap waits for itself.
    fn begin(&mut self, wait: impl FnOnce() -> bool + Send + 'static) {
        self.waiting = std::thread::Builder::new()
            .name("grace-period".into())
            .spawn(wait)
            .ok();
    }

    fn covers(&mut self, dir: &Path, on_record: bool) -> bool {
        let first_swap = self.swapped.insert(dir.to_owned());
        if on_record {
            return true;
        }
        if let Some(waiting) = self.waiting.take() {
            self.elapsed = waiting.join().unwrap_or(false);
        }
        self.elapsed && first_swap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_early_grace_period_covers_each_filter_once() {
        let mut grace = EarlyGrace::default();
        grace.begin(|| true);
        assert!(grace.covers(Path::new("/pins/eth0"), false));
        assert!(
            !grace.covers(Path::new("/pins/eth0"), false),
            "its own flip came after the grace period began"
        );
        assert!(grace.covers(Path::new("/pins/eth1"), false));
    }

    #[test]
    fn a_swap_covered_by_a_record_still_counts_as_the_filters_swap() {
        let mut grace = EarlyGrace::default();
        grace.begin(|| true);
        assert!(grace.covers(Path::new("/pins/eth0"), true));
        assert!(
            !grace.covers(Path::new("/pins/eth0"), false),
            "the first swap's flip came after the grace period began"
        );
    }

    #[test]
    fn no_grace_period_or_a_refused_one_covers_nothing() {
        assert!(!EarlyGrace::default().covers(Path::new("/pins/eth0"), false));
        let mut refused = EarlyGrace::default();
        refused.begin(|| false);
        assert!(!refused.covers(Path::new("/pins/eth0"), false));
    }
}
