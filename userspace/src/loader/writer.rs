//! One writer at a time. An apply diffs against its record of what the inactive
//! copy holds (record.rs) and a rollback flips to the other copy; two of them
//! interleaving (a CLI apply beside the agent, a watchdog's rollback during an
//! apply) would leave maps and record disagreeing for good. Every change of the
//! maps or of the pending-confirm state holds this exclusive `flock` on the pin
//! root directory; the functions that need it take it as a parameter, so a caller
//! cannot forget it.

use std::{fs::File, io};

use nix::fcntl::{Flock, FlockArg};

use super::{LoaderError, PinRoot};

pub struct WriterLock {
    _lock: Flock<File>,
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
        Ok(Self { _lock: lock })
    }
}
