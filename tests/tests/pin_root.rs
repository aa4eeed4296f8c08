//! The pin root against another local user (issue 17, item 5), acted by a real
//! unprivileged process (`setpriv` to uid/gid 65534) in the test's own bpffs,
//! mounted 1777 as a bare `mount -t bpf` mounts it. Airlock runs under umask 000,
//! so nothing it makes is private by accident:
//! - what it makes is 0700 (directories) and 0600 (pins, the agent's lock and
//!   socket);
//! - the user cannot open, so cannot `flock`, anything an apply or a rollback waits
//!   on, nor rename a filter's directory: while they try, an apply completes and an
//!   unconfirmed `apply --confirm` is rolled back on time;
//! - a pin root the user made first (with a `link` symlink to another pin root's
//!   filter), one others can write, a symlinked one, a pin directory of theirs or
//!   a planted `link` is refused with a clear error, and the filter it points to
//!   keeps filtering.
//!
//! Needs root; fails (never skips) without it.

use std::{
    fs,
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use airlock::loader::{LINK_PIN, LinkKind, pinned_link_state};
use airlock_integration::{
    cli::{Run, airlock_bin},
    fixture::{Fixture, PORT},
    netns::{PrivateBpffs, addr, wait_until},
};

const NOBODY: &str = "65534";

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// The fixture's namespaces and server, with a bpffs mounted as a bare
/// `mount -t bpf` mounts it (1777, so any user can make entries in it) and
/// Airlock's pin root in it, as /sys/fs/bpf/airlock is on such a host.
struct Bed {
    f: Fixture,
    bpffs: PrivateBpffs,
}

impl Bed {
    fn new(prefix: &str) -> Self {
        let f = Fixture::new(prefix);
        let bpffs = PrivateBpffs::with_mode("1777");
        assert_eq!(mode(bpffs.path()), 0o1777, "bpffs's own default");
        Self { f, bpffs }
    }

    fn root(&self) -> PathBuf {
        self.bpffs.path().join("airlock")
    }

    fn iface(&self) -> &str {
        &self.f.bed.server_if
    }

    /// `default: drop`; the database port from `from` only.
    fn policy(&self, file: &str, from: &str) -> PathBuf {
        self.f.write(
            file,
            &format!(
                "version: 1\ninterfaces: [{iface}]\ndefault: drop\nmanagement: [\"2001:db8:ffff::1\"]\nsets:\n  office: [198.51.100.0/24, \"2001:db8:100::/48\"]\n  partners: [192.0.2.0/24, \"2001:db8:1::/48\"]\nrules:\n  - name: db\n    ports: [{PORT}/tcp]\n    from: [{from}]\n",
                iface = self.iface(),
            ),
        )
    }

    /// `airlock <args>` in the server namespace under umask 000, with `root` as the
    /// pin root.
    fn command(&self, root: &Path, args: &[&str]) -> Command {
        let mut command = self.f.bed.server.command("sh");
        command
            .args(["-c", "umask 000 && exec \"$@\"", "sh"])
            .arg(airlock_bin())
            .args(args)
            .env("AIRLOCK_PIN_ROOT", root)
            .env("NO_COLOR", "1")
            .env_remove("SSH_CONNECTION")
            .env_remove("AIRLOCK_LOG");
        command
    }

    /// Runs `airlock <args>`, failing the test if it takes longer than `limit`
    /// (as it would, waiting on a lock another user holds).
    fn airlock_within(&self, root: &Path, args: &[&str], limit: Duration) -> Run {
        let child = self
            .command(root, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running airlock");
        let started = Instant::now();
        let mut child = Reaped(child);
        while child.0.try_wait().expect("waiting for airlock").is_none() {
            assert!(
                started.elapsed() < limit,
                "`airlock {}` still running after {limit:?}: waiting on a lock?",
                args.join(" ")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let child = child.take();
        child.wait_with_output().expect("airlock's output").into()
    }

    fn airlock(&self, root: &Path, args: &[&str]) -> Run {
        self.airlock_within(root, args, Duration::from_secs(60))
    }

    fn apply(&self, root: &Path, policy: &Path, extra: &[&str]) -> Run {
        let mut args = vec!["apply", "-f", s(policy)];
        args.extend_from_slice(extra);
        let run = self.airlock_within(root, &args, Duration::from_secs(20));
        assert_eq!(run.code, 0, "apply failed: {}", run.stderr);
        run
    }

    fn office_in_force(&self) -> bool {
        self.f.gets_in(addr::OFFICE_V4) && self.f.kept_out(addr::PARTNER_V4)
    }

    fn partners_in_force(&self) -> bool {
        self.f.gets_in(addr::PARTNER_V4) && self.f.kept_out(addr::OFFICE_V4)
    }
}

/// A child killed (if still running) and reaped when dropped, even by a failing
/// assertion.
struct Reaped(Child);

impl Reaped {
    fn take(self) -> Child {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again.
        unsafe { std::ptr::read(&this.0) }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sh -c script args...` as uid/gid 65534 with no groups, in a process group of
/// its own (killed as a whole when dropped), its output in `log`.
struct Unprivileged {
    child: Child,
    log: PathBuf,
}

impl Unprivileged {
    fn spawn(log: PathBuf, script: &str, args: &[&str]) -> Self {
        let out = fs::File::create(&log).expect("log file");
        let child = Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("setpriv (util-linux) runs the unprivileged user");
        Self { child, log }
    }

    /// Runs `script` to its end as the unprivileged user; its exit code and output.
    fn run(log: PathBuf, script: &str, args: &[&str]) -> (i32, String) {
        let mut user = Self::spawn(log, script, args);
        let status = user.child.wait().expect("waiting for the user");
        (status.code().unwrap_or(-1), user.output())
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Tries, over and over, to take and hold (a minute) a lock on each of its
/// arguments after the first, and to rename the filter's directory away. The
/// first argument is a control it may open: its lock is taken and let go at once,
/// showing the user runs and can lock what it can open.
const ATTACKER: &str = r#"
control=$1; from=$2; to=$3; shift 3
while :; do
    flock -n "$control" true && echo "control"
    for p in "$@"; do
        if flock -n "$p" sh -c 'echo "held $0"; sleep 60' "$p"; then :; else echo "refused $p"; fi
    done
    mv "$from" "$to" 2>/dev/null && echo "renamed $from"
    sleep 0.05
done
"#;

#[test]
fn another_user_cannot_stall_an_apply_or_a_rollback_and_what_airlock_makes_is_private() {
    let bed = Bed::new("pl");
    let root = bed.root();
    let office = bed.policy("office.yaml", "office");
    let partners = bed.policy("partners.yaml", "partners");
    bed.apply(&root, &office, &[]);
    assert!(bed.office_in_force());

    // Under umask 000: directories 0700, pins 0600.
    let dir = root.join(bed.iface());
    let lock = root.join("%lock");
    for made in [&root, &dir, &lock] {
        assert_eq!(mode(made), 0o700, "{}", made.display());
        assert_eq!(fs::symlink_metadata(made).unwrap().uid(), 0);
    }
    let pins: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
    assert!(pins.len() > 5, "{pins:?}");
    for pin in pins {
        assert_eq!(mode(&pin.path()), 0o600, "{}", pin.path().display());
    }

    let link = dir.join(LINK_PIN);
    let renamed = root.join("renamed");
    let attacker = Unprivileged::spawn(
        bed.f.dir.path().join("attacker.log"),
        ATTACKER,
        &[
            s(bed.bpffs.path()),
            s(&dir),
            s(&renamed),
            s(&root),
            s(&lock),
            s(&dir),
            s(&link),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(10), || attacker
            .output()
            .contains("control")),
        "the unprivileged user does not run: {}",
        attacker.output()
    );

    // While they try: a plain apply completes (airlock_within's limit), and so
    // does one on probation, which is rolled back at its deadline.
    bed.apply(&root, &partners, &[]);
    assert!(bed.partners_in_force());
    bed.apply(&root, &office, &[]);
    let started = Instant::now();
    // The shortest window `--confirm` takes.
    bed.apply(&root, &partners, &["--confirm", "10s"]);
    let applied = Instant::now();
    assert!(bed.partners_in_force(), "on probation");
    assert!(
        wait_until(Duration::from_secs(20), || bed.f.gets_in(addr::OFFICE_V4)),
        "the unconfirmed apply was not rolled back; the user's attempts: {}",
        attacker.output()
    );
    // The deadline falls 9 to 10 s after the apply took the lock; the watchdog
    // looks once a second, and a connect takes up to 0.9 s.
    let (since_start, since_apply) = (started.elapsed(), applied.elapsed());
    assert!(
        since_start >= Duration::from_secs(9) && since_apply < Duration::from_secs(13),
        "rolled back {since_start:?} after the apply began, {since_apply:?} after it \
         returned; deadline 10 s"
    );
    assert!(bed.office_in_force());

    let tried = attacker.output();
    drop(attacker);
    for path in [&root, &lock, &dir, &link] {
        assert!(
            tried.contains(&format!("refused {}", path.display())),
            "{}: {tried}",
            path.display()
        );
    }
    assert!(!tried.contains("held "), "{tried}");
    assert!(!tried.contains("renamed "), "{tried}");
    // `status` still sees the filter where it was put.
    let status = bed.airlock(&root, &["status", "-o", "json"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status.stdout.contains(bed.iface()), "{}", status.stdout);

    // The agent, under umask 000 too: its state directory 0700, lock and socket
    // 0600, and the user cannot open the lock.
    let state = bed.f.dir.path().join("state");
    let agent_log = bed.f.dir.path().join("agent.log");
    let agent = bed
        .command(
            &root,
            &[
                "agent",
                "-f",
                s(&office),
                "--pin-root",
                s(&root),
                "--state-dir",
                s(&state),
                "--metrics-addr",
                "127.0.0.1:19477",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&agent_log).expect("agent log"))
        .spawn()
        .expect("starting the agent");
    let agent = Reaped(agent);
    // By their final names: the socket is bound under another and renamed.
    let file = |kind: &str| -> Option<PathBuf> {
        fs::read_dir(&state)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == kind))
    };
    assert!(
        wait_until(Duration::from_secs(10), || file("lock").is_some()
            && file("samples").is_some()),
        "the agent's lock and socket in {}; log: {}",
        state.display(),
        fs::read_to_string(&agent_log).unwrap_or_default()
    );
    assert_eq!(mode(&state), 0o700);
    let lock_file = file("lock").expect("the agent's lock file");
    let socket = file("samples").expect("the agent's socket");
    assert_eq!(mode(&lock_file), 0o600);
    assert_eq!(mode(&socket), 0o600);
    let (code, output) = Unprivileged::run(
        bed.f.dir.path().join("agent-lock.log"),
        r#"flock -n "$1" true"#,
        &[s(&lock_file)],
    );
    assert_ne!(code, 0, "the user locked the agent's lock file: {output}");
    drop(agent);
}

/// What the unprivileged user plants, and how each is refused.
#[test]
fn pin_roots_and_pins_another_user_could_change_are_refused_and_nothing_outside_is_touched() {
    let bed = Bed::new("pv");
    let office = bed.policy("office.yaml", "office");
    let iface = bed.iface().to_owned();
    // The victim: a filter under a pin root of root's, in the same bpffs.
    let victim = bed.bpffs.path().join("victim");
    bed.apply(&victim, &office, &[]);
    let victim_link = victim.join(&iface).join(LINK_PIN);
    let victim_attached = || {
        pinned_link_state(&victim_link, LinkKind::Xdp).is_ok_and(|state| state.ifindex != 0)
            && bed.f.kept_out(addr::STRANGER_V4)
            && bed.f.gets_in(addr::OFFICE_V4)
    };
    assert!(victim_attached());

    // Made by the user first: a pin root holding an interface directory whose
    // `link` is the victim's.
    let planted = bed.bpffs.path().join("airlock");
    let (code, output) = Unprivileged::run(
        bed.f.dir.path().join("plant.log"),
        r#"mkdir "$1" && mkdir "$1/$2" && ln -s "$3" "$1/$2/link""#,
        &[s(&planted), &iface, s(&victim_link)],
    );
    assert_eq!(code, 0, "planting: {output}");
    assert_eq!(fs::symlink_metadata(&planted).unwrap().uid(), 65534);
    for args in [
        vec!["remove", "--all"],
        vec!["remove", "--iface", &iface],
        vec!["apply", "-f", s(&office)],
        vec!["status"],
        vec!["confirm", "--all"],
    ] {
        let run = bed.airlock(&planted, &args);
        assert_ne!(run.code, 0, "{args:?} used a pin root of uid 65534");
        assert!(
            run.stderr.contains(&format!(
                "refusing {}: it is owned by uid 65534",
                planted.display()
            )) && run.stderr.contains("rm -r"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(victim_attached(), "{args:?} touched the victim");
    }
    assert!(
        fs::symlink_metadata(planted.join(&iface).join(LINK_PIN))
            .unwrap()
            .is_symlink(),
        "nothing of the user's was acted on"
    );

    // Root's, but writable by everyone (as an older airlock made it under umask
    // 000), and the user planted the same there.
    let loose = bed.bpffs.path().join("loose");
    fs::create_dir(&loose).unwrap();
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o777)).unwrap();
    let (code, output) = Unprivileged::run(
        bed.f.dir.path().join("plant-loose.log"),
        r#"mkdir "$1/$2" && ln -s "$3" "$1/$2/link""#,
        &[s(&loose), &iface, s(&victim_link)],
    );
    assert_eq!(code, 0, "planting: {output}");
    let run = bed.airlock(&loose, &["remove", "--all"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("it is writable by its group and every user (mode 0777)")
            && run.stderr.contains("chmod 0700"),
        "{}",
        run.stderr
    );
    assert!(victim_attached());

    // A pin root that is a symlink to the victim's.
    let linked = bed.bpffs.path().join("linked");
    std::os::unix::fs::symlink(&victim, &linked).unwrap();
    let run = bed.airlock(&linked, &["remove", "--all"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("it is a symbolic link"),
        "{}",
        run.stderr
    );
    assert!(victim_attached());

    // In a pin root of root's (0700): an interface directory of the user's (as if
    // made before the root was closed), and a `link` that is a symlink.
    let trusted = bed.bpffs.path().join("trusted");
    fs::create_dir(&trusted).unwrap();
    fs::set_permissions(&trusted, fs::Permissions::from_mode(0o700)).unwrap();
    let theirs = trusted.join(&iface);
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::symlink(&victim_link, theirs.join(LINK_PIN)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let run = bed.airlock(&trusted, &["remove", "--all"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(&format!(
            "refusing {}: it is owned by uid 65534",
            theirs.display()
        )),
        "{}",
        run.stderr
    );
    assert!(victim_attached());
    std::os::unix::fs::chown(&theirs, Some(0), Some(0)).unwrap();
    for args in [
        vec!["remove", "--iface", &iface],
        vec!["apply", "-f", s(&office)],
        vec!["status"],
    ] {
        let run = bed.airlock(&trusted, &args);
        assert_ne!(run.code, 0, "{args:?}");
        assert!(
            run.stderr.contains(&format!(
                "refusing {}: it is a symbolic link (to {})",
                theirs.join(LINK_PIN).display(),
                victim_link.display()
            )),
            "{args:?}: {}",
            run.stderr
        );
        assert!(victim_attached(), "{args:?} touched the victim");
    }

    // The victim's own pin root is fine, and removing its filter works.
    let run = bed.airlock(&victim, &["remove", "--all"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(wait_until(Duration::from_secs(5), || bed
        .f
        .gets_in(addr::STRANGER_V4)));
}
