//! The wall clock jumping during a confirm window. The host's clock is never
//! touched: every `airlock` process of the test (apply, the watchdog it starts,
//! status, confirm) runs under libfaketime, whose offset the test changes through
//! a file while they run; the monotonic and boot clocks are left real
//! (`DONT_FAKE_MONOTONIC`), as a real clock step leaves them.
//!
//! The risk: the confirm deadline on the wall clock alone would move with it. Set
//! back an hour, the rollback that saves a locked-out operator comes an hour late;
//! set forward, the policy is rolled back before the operator could confirm it.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use super::{Tally, policy, s};
use crate::{
    cli::{Run, airlock_bin},
    fixture::Fixture,
    netns::{addr, wait_until},
};

/// libfaketime's library, from the Debian package `libfaketime` (`cargo xtask
/// setup` installs it).
fn libfaketime() -> Option<PathBuf> {
    let lib = Path::new("/usr/lib");
    fs::read_dir(lib)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .chain([lib.join("faketime/libfaketime.so.1")])
        .find(|p| p.exists())
}

/// The offset of the faked wall clock, in a file every faked process rereads.
struct FakeClock {
    lib: PathBuf,
    file: PathBuf,
}

impl FakeClock {
    fn new(f: &Fixture, lib: PathBuf) -> Self {
        let clock = Self {
            lib,
            file: f.dir.path().join("faketime"),
        };
        clock.set("+0");
        clock
    }

    /// Replaced whole (renamed over), never read half-written.
    fn set(&self, offset: &str) {
        let temp = self.file.with_extension("new");
        fs::write(&temp, format!("{offset}\n")).expect("faketime file");
        fs::rename(&temp, &self.file).expect("faketime file");
    }

    fn airlock(&self, f: &Fixture, args: &[&str]) -> Run {
        f.bed
            .server
            .command(airlock_bin())
            .args(args)
            .env("AIRLOCK_PIN_ROOT", f.bed.bpffs.path())
            .env("NO_COLOR", "1")
            .env_remove("SSH_CONNECTION")
            .env_remove("AIRLOCK_LOG")
            .env("LD_PRELOAD", &self.lib)
            .env("FAKETIME_TIMESTAMP_FILE", &self.file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("DONT_FAKE_MONOTONIC", "1")
            .output()
            .expect("running airlock")
            .into()
    }
}

/// Which policy is in force, by real connections: `Some(true)` office, `Some(false)`
/// partners, `None` neither (a wrong verdict).
fn office_in_force(f: &Fixture) -> Option<bool> {
    match (f.gets_in(addr::OFFICE_V4), f.gets_in(addr::PARTNER_V4)) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// The shortest window `--confirm` takes.
const WINDOW: Duration = Duration::from_secs(10);

pub fn jumps(f: &Fixture) -> Tally {
    let mut t = Tally::new("clock jumps in a confirm window");
    let Some(lib) = libfaketime() else {
        t.fail(
            "libfaketime not found (Debian package libfaketime; cargo xtask setup installs it)"
                .into(),
        );
        return t;
    };
    let clock = FakeClock::new(f, lib);
    let office = policy(f, "office");
    let partners = policy(f, "partners");
    let apply = |path: &Path, extra: &[&str]| {
        let mut args = vec!["apply", "-f", s(path)];
        args.extend_from_slice(extra);
        let run = clock.airlock(f, &args);
        assert_eq!(run.code, 0, "apply {args:?}: {}", run.stderr);
    };
    let window = format!("{}s", WINDOW.as_secs());

    // Set back an hour: the rollback must still come at the end of the window.
    apply(&office, &[]);
    apply(&partners, &["--confirm", &window]);
    let armed = Instant::now();
    thread::sleep(Duration::from_secs(2));
    t.faults += 1;
    clock.set("-1h");
    t.partners(f, "on probation, the clock set back an hour");
    // `status` (faked too) looks now and then, as an operator would.
    let mut early = None;
    let rolled_back = wait_until(WINDOW + Duration::from_secs(5), || {
        let _ = clock.airlock(f, &["status"]);
        let office = office_in_force(f) == Some(true);
        if office && armed.elapsed() < WINDOW - Duration::from_secs(1) {
            early.get_or_insert(armed.elapsed());
        }
        office
    });
    if let Some(at) = early {
        t.fail(format!(
            "clock set back 1 h: rolled back early, {at:.1?} into the window"
        ));
    }
    let after = armed.elapsed();
    if rolled_back && after <= WINDOW + Duration::from_secs(3) {
        t.office(f, "rolled back with the clock set back");
        t.outcome(format!(
            "clock set back 1 h in a {window} window: rolled back after {after:.1?}"
        ));
    } else {
        t.fail(format!(
            "clock set back 1 h in a {window} window: not rolled back ({after:.1?} after the apply; office in force: {:?})",
            office_in_force(f)
        ));
    }
    clock.set("+0");

    // Set forward an hour: the operator still has the window to confirm in.
    apply(&office, &[]);
    apply(&partners, &["--confirm", &window]);
    let armed = Instant::now();
    thread::sleep(Duration::from_secs(2));
    t.faults += 1;
    clock.set("+1h");
    thread::sleep(Duration::from_secs(2));
    let status = clock.airlock(f, &["status"]);
    match office_in_force(f) {
        Some(false) => {
            let confirmed = clock.airlock(f, &["confirm"]);
            if confirmed.code != 0 || confirmed.stdout.contains("too late") {
                t.fail(format!(
                    "clock set forward 1 h: confirm {} s into the window refused: {} {}",
                    armed.elapsed().as_secs(),
                    confirmed.stdout,
                    confirmed.stderr
                ));
            }
            thread::sleep((WINDOW + Duration::from_secs(2)).saturating_sub(armed.elapsed()));
            t.partners(f, "confirmed with the clock set forward, past the window");
            t.outcome(format!(
                "clock set forward 1 h in a {window} window: still on probation 2 s later, confirmed, kept"
            ));
        }
        other => t.fail(format!(
            "clock set forward 1 h: rolled back early, {:.1?} into a {window} window (office in force: {other:?}; status: {})",
            armed.elapsed(),
            status.stdout
        )),
    }
    clock.set("+0");
    let _ = f.airlock(&["remove", "--all"]);
    t
}
