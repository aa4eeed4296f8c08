//! Running the real `airlock` binary, as a user would.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use crate::netns::Namespace;

/// The binary under test: `$AIRLOCK_BIN` (set by `cargo xtask test`), else the one
/// cargo built beside this test executable.
pub fn airlock_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("AIRLOCK_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    // Tests live in target/<profile>/deps/, binaries in target/<profile>/.
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join("airlock");
    assert!(
        candidate.exists(),
        "{} not found: build it first (cargo xtask test does) or set AIRLOCK_BIN",
        candidate.display()
    );
    candidate
}

/// The outcome of one CLI run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `airlock <args>` inside `ns` with the given pin root.
pub fn airlock_in(ns: &Namespace, pin_root: &std::path::Path, args: &[&str]) -> Run {
    airlock_bin_in(&airlock_bin(), ns, pin_root, args)
}

/// [`airlock_in`] with the binary at `bin` (the upgrade tests run two builds).
pub fn airlock_bin_in(
    bin: &std::path::Path,
    ns: &Namespace,
    pin_root: &std::path::Path,
    args: &[&str],
) -> Run {
    let output = ns
        .command(bin)
        .args(args)
        .env("AIRLOCK_PIN_ROOT", pin_root)
        .env("NO_COLOR", "1")
        // The session running the tests is not the one under test (anti-lockout).
        .env_remove("SSH_CONNECTION")
        // Log levels come from the arguments (`-v`), whatever the caller's shell sets.
        .env_remove("AIRLOCK_LOG")
        .output()
        .expect("running airlock");
    output.into()
}

/// Runs `airlock <args>` in the current namespace (no root needed for validate etc.).
pub fn airlock(args: &[&str]) -> Run {
    Command::new(airlock_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("running airlock")
        .into()
}
