//! One writer at a time. An apply rewrites the inactive copy and flips to it, and a
//! rollback flips back to the other copy; two of them interleaving (a CLI apply beside
//! the agent, a watchdog's rollback during an apply) could flip to a copy that is half
//! written, or leave `META` describing a policy no copy holds. Every change of the maps
//! or of the pending-confirm state holds this exclusive `flock` on `%lock`, a 0700
//! directory of root's in the pin root (bpffs holds no regular files); the functions
//! that need it take it as a parameter, so a caller cannot forget it. Not on the pin
//! root itself: an older airlock made that 0755, and any user who can open a file can
//! hold a lock on it, stalling every apply and rollback.

use std::{
    collections::HashMap,
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
    /// The filters it was begun for (by pin directory), each with the
    /// `ACTIVE_GEN` word in force then: it covers a filter only while that flip is
    /// still the last one.
    words: HashMap<PathBuf, u32>,
}

impl WriterLock {
    /// Blocks until no other airlock process is changing filters under `root`
    /// (mounting bpffs there first if needed, as an apply would).
    pub fn acquire(root: &PinRoot) -> Result<Self, LoaderError> {
        root.ensure_mounted()?;
        let path = root.path();
        let file = root.lock_dir()?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            LoaderError::io("locking", path, io::Error::from_raw_os_error(errno as i32))
        })?;
        Ok(Self {
            _lock: lock,
            grace: Mutex::new(EarlyGrace::default()),
        })
    }

    /// As [`acquire`](Self::acquire), but `None` at once if another process holds it.
    pub fn try_acquire(root: &PinRoot) -> Result<Option<Self>, LoaderError> {
        root.ensure_mounted()?;
        let path = root.path();
        let file = root.lock_dir()?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(Self {
                _lock: lock,
                grace: Mutex::new(EarlyGrace::default()),
            })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(LoaderError::io(
                "locking",
                path,
                io::Error::from_raw_os_error(errno as i32),
            )),
        }
    }

    /// As [`acquire`](Self::acquire), and begins an RCU grace period on a thread
    /// for the filters on `ifaces` that have none on record since their last flip
    /// (none if all have, or none is installed yet: a process cannot exit while a
    /// thread of it waits in `membarrier`). Every flip was made before the lock was
    /// taken, so once it ends no packet reads those filters' retired copies, and a
    /// swap under this lock rewrites one without waiting again, as long as no
    /// other flip came since. For a caller that compiles while holding the lock:
    /// the wait, some 10-20 ms, passes meanwhile.
    pub fn acquire_early(root: &PinRoot, ifaces: &[String]) -> Result<Self, LoaderError> {
        let lock = Self::acquire(root)?;
        let dirs: Vec<PathBuf> = ifaces.iter().map(|i| root.interface_dir(i)).collect();
        let words = super::grace_record::words_not_on_record(&dirs);
        if !words.is_empty() {
            lock.grace
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .begin(words, super::grace::membarrier);
        }
        Ok(lock)
    }

    /// Whether the filter pinned at `dir` may be rewritten without a grace period of
    /// its own: one since its last flip is on record (`on_record`), or one begun
    /// under this lock has ended (this waits for it) and `word`, the word in force,
    /// is the one it was begun with.
    pub(crate) fn grace_covers(&self, dir: &Path, on_record: bool, word: Option<u32>) -> bool {
        self.grace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .covers(dir, on_record, word)
    }
}

impl EarlyGrace {
    /// Runs `wait` (true once a grace period has ended) on a thread of its own for
    /// the filters in `words`; if the OS refuses one, nothing is covered and every
    /// swap waits for itself.
    fn begin(
        &mut self,
        words: HashMap<PathBuf, u32>,
        wait: impl FnOnce() -> bool + Send + 'static,
    ) {
        self.words = words;
        self.waiting = std::thread::Builder::new()
            .name("grace-period".into())
            .spawn(wait)
            .ok();
    }

    fn covers(&mut self, dir: &Path, on_record: bool, word: Option<u32>) -> bool {
        if on_record {
            return true;
        }
        if let Some(waiting) = self.waiting.take() {
            self.elapsed = waiting.join().unwrap_or(false);
        }
        self.elapsed && word.is_some() && self.words.get(dir) == word.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begun(wait: impl FnOnce() -> bool + Send + 'static) -> EarlyGrace {
        let mut grace = EarlyGrace::default();
        let words =
            [("/pins/eth0", 5), ("/pins/eth1", 8)].map(|(dir, word)| (PathBuf::from(dir), word));
        grace.begin(HashMap::from(words), wait);
        grace
    }

    #[test]
    fn an_early_grace_period_covers_a_filter_until_its_next_flip() {
        let mut grace = begun(|| true);
        assert!(grace.covers(Path::new("/pins/eth0"), false, Some(5)));
        assert!(
            !grace.covers(Path::new("/pins/eth0"), false, Some(7)),
            "a flip since the grace period began"
        );
        assert!(grace.covers(Path::new("/pins/eth1"), false, Some(8)));
        assert!(
            !grace.covers(Path::new("/pins/eth2"), false, Some(8)),
            "not begun for it"
        );
        assert!(!grace.covers(Path::new("/pins/eth1"), false, None));
    }

    #[test]
    fn a_record_covers_without_the_early_grace_period() {
        let mut grace = begun(|| false);
        assert!(grace.covers(Path::new("/pins/eth0"), true, Some(7)));
        assert!(!grace.covers(Path::new("/pins/eth0"), false, Some(5)));
    }

    #[test]
    fn no_grace_period_or_a_refused_one_covers_nothing() {
        assert!(!EarlyGrace::default().covers(Path::new("/pins/eth0"), false, Some(0)));
        let mut refused = begun(|| false);
        assert!(!refused.covers(Path::new("/pins/eth0"), false, Some(5)));
    }
}
