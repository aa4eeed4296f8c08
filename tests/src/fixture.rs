//! The common set-up of the network and agent tests: a test bed with a TCP server on
//! the database port, a scratch directory for policies, and the checks a user makes
//! (does this source get in?).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    cli::{Run, airlock_in},
    netns::{Server, Testbed, require_root},
};

/// The port the test policies protect.
pub const PORT: u16 = 5432;
/// Longer than any connect on a veth, shorter than TCP's first SYN retransmission
/// (1 s): a connect that needs longer had a packet dropped.
pub const ALLOWED: Duration = Duration::from_millis(900);
/// How long a refused connect is given to (wrongly) succeed.
pub const REFUSED: Duration = Duration::from_millis(300);

pub struct Fixture {
    pub bed: Testbed,
    _server: Server,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(prefix: &str) -> Self {
        require_root();
        let bed = Testbed::new(prefix);
        let server = Server::start(&bed.server, PORT);
        Self {
            bed,
            _server: server,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Writes `text` to `file` in the scratch directory.
    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).expect("write policy");
        path
    }

    /// `airlock <args>` in the server namespace, with the test bed's pin root.
    pub fn airlock(&self, args: &[&str]) -> Run {
        airlock_in(&self.bed.server, self.bed.bpffs.path(), args)
    }

    pub fn apply(&self, policy: &Path) {
        let run = self.airlock(&["apply", "-f", policy.to_str().expect("utf-8")]);
        assert_eq!(run.code, 0, "apply failed: {}", run.stderr);
    }

    pub fn status_json(&self) -> serde_json::Value {
        let run = self.airlock(&["status", "-o", "json"]);
        assert_eq!(run.code, 0, "status failed: {}", run.stderr);
        serde_json::from_str(&run.stdout).expect("status JSON")
    }

    pub fn gets_in(&self, source: &str) -> bool {
        self.bed.connects(source, PORT, ALLOWED)
    }

    pub fn kept_out(&self, source: &str) -> bool {
        !self.bed.connects(source, PORT, REFUSED)
    }
}
