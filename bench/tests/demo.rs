//! README's first command, `cargo xtask demo`, runs this binary: it must keep
//! working. It exits non-zero if any connection gets a verdict it did not expect.

use std::process::Command;

use airlock_integration::{cli::airlock_bin, netns::require_root};

#[test]
fn the_demo_shows_allowed_sources_getting_in_and_others_kept_out() {
    require_root();
    let output = Command::new(env!("CARGO_BIN_EXE_airlock-demo"))
        .env("AIRLOCK_BIN", airlock_bin())
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("GOT IN") && stdout.contains("kept out"),
        "{stdout}"
    );
    assert!(!stdout.contains("unexpected"), "{stdout}");
}
