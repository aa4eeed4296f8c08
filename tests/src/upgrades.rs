//! Upgrades without a gap: a filter pinned by one build of airlock is taken over
//! by another whose map layout differs (the same source built with
//! `--features layout-bump`, `$AIRLOCK_BIN_LAYOUT_BUMP`), back and forth, while
//! - real UDP datagrams cross the filtered veth from the client namespace: to a
//!   port the policy opens (every one must arrive) and to one it closes (none may:
//!   one arriving is a moment without a filter, or a wrong verdict);
//! - threads run frames through whatever program the XDP link runs at that moment
//!   (BPF_PROG_TEST_RUN), each verdict checked against the policy.
//!
//! Both builds apply the same policy, so every verdict of either program is known.

use std::{
    collections::BTreeMap,
    ffi::CString,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use airlock::loader::{LINK_PIN, LinkKind, pinned_link_state};

use crate::{
    agent::Agent,
    cli::{Run, airlock_bin, airlock_bin_in},
    fixture::Fixture,
    kernel::{XDP_DROP, XDP_PASS},
    netns::{Namespace, Testbed, addr},
    packet::FrameSpec,
};

/// The variable `cargo xtask test` and `cargo xtask soak` set to the second build.
pub const BUMPED_BIN: &str = "AIRLOCK_BIN_LAYOUT_BUMP";

/// The build of airlock with the other map layout. Fails, saying how to get it,
/// when the environment does not name one: the upgrade tests cannot run without.
pub fn bumped_bin() -> PathBuf {
    let path = std::env::var_os(BUMPED_BIN)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "${BUMPED_BIN} is not set: the upgrade tests need a second airlock built with \
             `--features layout-bump` (cargo xtask test and cargo xtask soak build it)"
            )
        });
    assert!(
        path.exists(),
        "{} (${BUMPED_BIN}) does not exist",
        path.display()
    );
    path
}

/// The port the policy opens to the office over UDP, and one it does not.
pub const OPEN_UDP: u16 = 9001;
pub const CLOSED_UDP: u16 = 9002;

/// Default drop; the office may reach the database over TCP and [`OPEN_UDP`].
pub fn policy_text(iface: &str) -> String {
    format!(
        "version: 1\ninterfaces: [{iface}]\nmode: enforce\ndefault: drop\n\
         sets:\n  office: [198.51.100.0/24]\n\
         rules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office]\n\
         \x20 - name: feed\n    ports: [{OPEN_UDP}/udp]\n    from: [office]\n"
    )
}

/// Frames the checking threads run, and the verdict the policy gives each.
fn frames() -> Vec<(Vec<u8>, u32)> {
    vec![
        (
            FrameSpec::tcp(addr::OFFICE_V4, 5432).build().bytes,
            XDP_PASS,
        ),
        (
            FrameSpec::tcp(addr::STRANGER_V4, 5432).build().bytes,
            XDP_DROP,
        ),
        (
            FrameSpec::udp(addr::OFFICE_V4, OPEN_UDP).build().bytes,
            XDP_PASS,
        ),
        (
            FrameSpec::udp(addr::OFFICE_V4, CLOSED_UDP).build().bytes,
            XDP_DROP,
        ),
        (FrameSpec::tcp(addr::OFFICE_V4, 22).build().bytes, XDP_DROP),
    ]
}

/// The figures of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// Takeovers done (each a different layout than the filter it replaced).
    pub takeovers: u64,
    /// Real datagrams sent to the open port, and how many arrived.
    pub open_sent: u64,
    pub open_received: u64,
    /// Real datagrams sent to the closed port, and how many arrived (must be 0).
    pub closed_sent: u64,
    pub closed_received: u64,
    /// Datagrams the server's UDP sockets dropped for a full buffer
    /// (`RcvbufErrors`): a datagram lost there was not lost to the filter.
    pub socket_drops: u64,
    /// Real datagrams sent while a takeover command ran.
    pub sent_during_takeover: u64,
    /// Frames run through the attached program, and those judged wrongly.
    pub frames: u64,
    pub wrong_verdicts: u64,
    /// Distinct programs the XDP link was seen running.
    pub programs_seen: usize,
    /// Slowest takeover command.
    pub slowest: Duration,
    /// Failures other than verdicts (an apply refused, pins left behind...).
    pub failures: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
            && self.takeovers > 0
            && self.wrong_verdicts == 0
            && self.closed_received == 0
            && self.open_received == self.open_sent
            && self.sent_during_takeover > 0
            && self.frames > 0
    }

    pub fn figures(&self) -> String {
        format!(
            "{} takeovers (slowest {:.0?}), {} real datagrams ({} while a takeover ran): {} of {} \
             to the open port arrived, {} of {} to the closed port arrived; {} frames through \
             the attached program ({} programs seen), {} wrong verdicts; {} datagrams dropped \
             by a full socket",
            self.takeovers,
            self.slowest,
            self.open_sent + self.closed_sent,
            self.sent_during_takeover,
            self.open_received,
            self.open_sent,
            self.closed_received,
            self.closed_sent,
            self.frames,
            self.programs_seen,
            self.wrong_verdicts,
            self.socket_drops
        )
    }
}

/// Runs `airlock` built as `bin` in the server namespace.
pub fn airlock_as(f: &Fixture, bin: &Path, args: &[&str]) -> Run {
    airlock_bin_in(bin, &f.bed.server, f.bed.bpffs.path(), args)
}

/// Installs with the plain build, then `takeovers` takeovers alternating between
/// the two builds, traffic running throughout each.
pub fn run(f: &Fixture, takeovers: u64) -> Report {
    let builds = [airlock_bin(), bumped_bin()];
    let iface = f.bed.server_if.clone();
    let policy = f.write("upgrade.yaml", &policy_text(&iface));
    let policy = policy.to_str().expect("utf-8");
    let mut report = Report::default();
    let first = airlock_as(f, &builds[0], &["apply", "-f", policy]);
    if first.code != 0 {
        report.failures.push(format!(
            "first apply: exit {}: {}",
            first.code, first.stderr
        ));
        return report;
    }
    let mut traffic = Traffic::new(f);
    for n in 0..takeovers {
        let bin = &builds[(n as usize + 1) % 2];
        let done = traffic.across(f, &mut report, || {
            let run = airlock_as(f, bin, &["apply", "-f", policy]);
            if run.code != 0 || !run.stdout.contains("took over") {
                return Err(format!(
                    "takeover {n} by {}: exit {}: {}{}",
                    bin.display(),
                    run.code,
                    run.stdout,
                    run.stderr
                ));
            }
            let status = airlock_as(f, bin, &["status"]);
            if status.code != 0 {
                return Err(format!(
                    "status after takeover {n}: exit {}: {}",
                    status.code, status.stderr
                ));
            }
            Ok(())
        });
        if !done {
            break;
        }
    }
    traffic.finish(f, &mut report);
    report
}

/// The agent of a DaemonSet rolling update: the plain build's agent applies the
/// policy and exits (SIGTERM, leaving its filter pinned), then the other build's
/// agent starts on the same pins, traffic crossing the filter while it does.
pub fn agent_takeover(f: &Fixture) -> Report {
    let policy = f.write("upgrade.yaml", &policy_text(&f.bed.server_if));
    let old = Agent::start(f, &[], &policy, &[]);
    old.stop(nix::sys::signal::Signal::SIGTERM);
    let mut report = Report::default();
    let mut traffic = Traffic::new(f);
    // The wrapper runs the other build in place of the one `Agent` names.
    let script = format!("exec '{}' \"$@\"", bumped_bin().display());
    let mut agent = None;
    traffic.across(f, &mut report, || {
        let started = Agent::start(f, &["sh", "-c", &script], &policy, &[]);
        let log = started.log();
        agent = Some(started);
        if log.contains("another map layout") {
            Ok(())
        } else {
            Err(format!(
                "the new agent did not take the filter over; log:\n{log}"
            ))
        }
    });
    traffic.finish(f, &mut report);
    if let Some(agent) = agent {
        agent.stop(nix::sys::signal::Signal::SIGTERM);
    }
    report
}

/// Real datagrams and checked frames across the filter, one takeover at a time.
pub struct Traffic {
    receiver: Receiver,
    /// `RcvbufErrors` in the server namespace when the traffic started.
    socket_drops: u64,
    dir: PathBuf,
    seen: BTreeMap<u32, u64>,
}

impl Traffic {
    pub fn new(f: &Fixture) -> Self {
        Self {
            receiver: Receiver::start(&f.bed.server),
            socket_drops: rcvbuf_errors(&f.bed.server),
            dir: f.bed.bpffs.path().join(&f.bed.server_if),
            seen: BTreeMap::new(),
        }
    }

    /// Runs `takeover` with traffic crossing the filter before, during and after
    /// it, adds the figures to `report`, and checks that the same XDP link runs
    /// another program afterwards and no staging directory is left. False if it
    /// failed.
    pub fn across(
        &mut self,
        f: &Fixture,
        report: &mut Report,
        takeover: impl FnOnce() -> Result<(), String>,
    ) -> bool {
        let link_pin = self.dir.join(LINK_PIN);
        let link_before = pinned_link_state(&link_pin, LinkKind::Xdp).ok();
        let sender = Sender::start(&f.bed.client, &self.receiver.counts);
        let checker = Checker::start(&self.dir);
        // Traffic under way before the takeover starts.
        thread::sleep(Duration::from_millis(50));
        let sent_before = sender.sent();
        let started = Instant::now();
        let result = takeover();
        report.slowest = report.slowest.max(started.elapsed());
        report.sent_during_takeover += sender.sent() - sent_before;
        thread::sleep(Duration::from_millis(50));
        let (open, closed) = sender.finish();
        report.open_sent += open;
        report.closed_sent += closed;
        let checked = checker.finish();
        report.frames += checked.frames;
        report.wrong_verdicts += checked.wrong;
        for (program, frames) in checked.by_program {
            *self.seen.entry(program).or_insert(0) += frames;
        }
        if let Err(failure) = result {
            report.failures.push(failure);
            return false;
        }
        report.takeovers += 1;
        let link_after = pinned_link_state(&link_pin, LinkKind::Xdp).ok();
        match (link_before, link_after) {
            (Some(before), Some(after))
                if before.link_id == after.link_id && before.program_id != after.program_id => {}
            other => report.failures.push(format!(
                "takeover {}: the same link should run a new program: {other:?}",
                report.takeovers
            )),
        }
        let left = staging_left(f.bed.bpffs.path());
        if !left.is_empty() {
            report.failures.push(format!(
                "takeover {} left staging directories: {left:?}",
                report.takeovers
            ));
        }
        true
    }

    /// Waits for the last datagrams and adds the receiver's counts to `report`.
    pub fn finish(self, f: &Fixture, report: &mut Report) {
        let (open, closed) = self.receiver.finish(report.open_sent);
        report.socket_drops = rcvbuf_errors(&f.bed.server) - self.socket_drops;
        report.open_received = open;
        report.closed_received = closed;
        report.programs_seen = self.seen.len();
    }
}

/// The UDP `RcvbufErrors` counter of `ns`.
fn rcvbuf_errors(ns: &Namespace) -> u64 {
    ns.spawn(|| {
        // The namespace of this thread, not of the process's main thread.
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("snmp");
        let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
        let (names, values) = (
            udp.next().expect("Udp names"),
            udp.next().expect("Udp values"),
        );
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "RcvbufErrors")
            .and_then(|(_, value)| value.parse().ok())
            .expect("RcvbufErrors")
    })
    .join()
    .expect("snmp thread")
}

/// Staging directories in the pin root.
pub fn staging_left(pin_root: &Path) -> Vec<String> {
    std::fs::read_dir(pin_root)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("%staging-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Counts the datagrams arriving on the two ports, in the server namespace.
struct Receiver {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 2]>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// How far the sender may run ahead of the receiver on the open port: well within
/// the receive buffer, so a datagram lost is lost to the filter, not to a full
/// socket.
const IN_FLIGHT: u64 = 256;
/// The receiving sockets' buffer (SO_RCVBUFFORCE): far more than `IN_FLIGHT`
/// datagrams' worth.
const RECEIVE_BUFFER: libc::c_int = 16 << 20;

impl Receiver {
    fn start(ns: &Namespace) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let mut threads = Vec::new();
        for (i, port) in [OPEN_UDP, CLOSED_UDP].into_iter().enumerate() {
            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(ns.spawn(move || {
                let socket = UdpSocket::bind(("0.0.0.0", port)).expect("bind receiver");
                // SAFETY: setsockopt with a pointer to a c_int that outlives the call.
                let set = unsafe {
                    libc::setsockopt(
                        socket.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUFFORCE,
                        (&RECEIVE_BUFFER as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(
                    set,
                    0,
                    "SO_RCVBUFFORCE: {}",
                    std::io::Error::last_os_error()
                );
                socket
                    .set_read_timeout(Some(Duration::from_millis(20)))
                    .expect("read timeout");
                ready_tx.send(()).ok();
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if socket.recv(&mut buf).is_ok() {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("receiver did not start");
        }
        Self {
            stop,
            counts,
            threads,
        }
    }

    /// Waits (up to 2 s) for `open_sent` datagrams on the open port, then stops.
    fn finish(self, open_sent: u64) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.counts[0].load(Ordering::Relaxed) < open_sent && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // Late arrivals on the closed port would show here too.
        thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }
}

/// Sends datagrams from the office to both ports, alternately, until stopped.
struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: thread::JoinHandle<(u64, u64)>,
}

impl Sender {
    /// `received`: the receiver's counts, for pacing.
    fn start(ns: &Namespace, received: &Arc<[AtomicU64; 2]>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::clone(received);
        let source: std::net::IpAddr = addr::OFFICE_V4.parse().expect("address");
        let server = Testbed::server_addr_for(source);
        let base = received[0].load(Ordering::Relaxed);
        let thread = {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            ns.spawn(move || {
                let socket = UdpSocket::bind(SocketAddr::new(source, 0)).expect("bind sender");
                let (mut open, mut closed) = (0u64, 0u64);
                // Bounded whatever happens to the takeover.
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if open + base > received[0].load(Ordering::Relaxed) + IN_FLIGHT {
                        thread::yield_now();
                        continue;
                    }
                    socket
                        .send_to(b"airlock", SocketAddr::new(server, OPEN_UDP))
                        .expect("send");
                    socket
                        .send_to(b"airlock", SocketAddr::new(server, CLOSED_UDP))
                        .expect("send");
                    open += 1;
                    closed += 1;
                    sent.fetch_add(2, Ordering::Relaxed);
                }
                (open, closed)
            })
        };
        Self { stop, sent, thread }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sender thread")
    }
}

/// What the checking threads saw.
#[derive(Default)]
struct Checked {
    frames: u64,
    wrong: u64,
    by_program: BTreeMap<u32, u64>,
}

/// Threads running frames through the program the XDP link runs at each moment.
struct Checker {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Checked>>,
}

const CHECK_THREADS: usize = 2;

impl Checker {
    fn start(dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        // Opened once: the same link is pinned in the new directory after the takeover.
        let link = Arc::new(bpf::open(&dir.join(LINK_PIN)).expect("opening the XDP link pin"));
        let threads = (0..CHECK_THREADS)
            .map(|t| {
                let (stop, link) = (Arc::clone(&stop), Arc::clone(&link));
                thread::spawn(move || {
                    // The takeover (an `airlock` process) must not wait behind these.
                    // SAFETY: setpriority on this thread's id; no memory is passed.
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10)
                    };
                    check(&link, t, &stop)
                })
            })
            .collect();
        Self { stop, threads }
    }

    fn finish(self) -> Checked {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Checked::default();
        for thread in self.threads {
            let one = thread.join().expect("checking thread");
            all.frames += one.frames;
            all.wrong += one.wrong;
            for (program, frames) in one.by_program {
                *all.by_program.entry(program).or_insert(0) += frames;
            }
        }
        all
    }
}

fn check(link: &OwnedFd, t: usize, stop: &AtomicBool) -> Checked {
    let frames = frames();
    let mut checked = Checked::default();
    let mut program: Option<(u32, OwnedFd)> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = t;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let id = bpf::link_program(link).expect("reading the XDP link");
        if program.as_ref().is_none_or(|(known, _)| *known != id) {
            match bpf::program_by_id(id) {
                Ok(fd) => program = Some((id, fd)),
                // Replaced and freed between the two reads: read the link again.
                Err(_) => continue,
            }
        }
        let (id, fd) = program.as_ref().expect("program");
        let (frame, expected) = &frames[i % frames.len()];
        i += 1;
        let verdict = bpf::test_run(fd, frame).expect("BPF_PROG_TEST_RUN");
        checked.frames += 1;
        *checked.by_program.entry(*id).or_insert(0) += 1;
        if verdict != *expected {
            checked.wrong += 1;
        }
    }
    checked
}

/// The few bpf(2) commands the checker needs, on raw descriptors: the program a
/// link runs changes under it, so it cannot hold an aya program object.
mod bpf {
    use super::*;

    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

    fn call(command: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<libc::c_long> {
        // SAFETY: attr is larger than what these commands read; the pointers the
        // callers put in it outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                attr.as_mut_ptr(),
                std::mem::size_of_val(attr),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(rc)
    }

    fn owned(fd: libc::c_long) -> OwnedFd {
        // SAFETY: a fresh descriptor nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    pub fn open(path: &Path) -> std::io::Result<OwnedFd> {
        let path = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        let mut attr = [0u64; 16];
        attr[0] = path.as_ptr() as u64;
        call(BPF_OBJ_GET, &mut attr).map(owned)
    }

    /// The id of the program `link` runs (`struct bpf_link_info`: prog_id at byte 8).
    pub fn link_program(link: &OwnedFd) -> std::io::Result<u32> {
        let mut info = [0u8; 64];
        let mut attr = [0u64; 16];
        attr[0] = u64::from(link.as_raw_fd() as u32) | ((info.len() as u64) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        call(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(u32::from_ne_bytes([info[8], info[9], info[10], info[11]]))
    }

    pub fn program_by_id(id: u32) -> std::io::Result<OwnedFd> {
        let mut attr = [0u64; 16];
        attr[0] = u64::from(id);
        call(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)
    }

    /// Runs `frame` through `program` once; its XDP action.
    pub fn test_run(program: &OwnedFd, frame: &[u8]) -> std::io::Result<u32> {
        let mut attr = [0u64; 16];
        // prog_fd, retval (out); data_size_in, data_size_out; data_in; data_out;
        // repeat, duration.
        attr[0] = u64::from(program.as_raw_fd() as u32);
        attr[1] = frame.len() as u64;
        attr[2] = frame.as_ptr() as u64;
        attr[4] = 1;
        call(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok((attr[0] >> 32) as u32)
    }
}

/// The steps of a takeover the binary can stop at (`AIRLOCK_TEST_STOP_AT`).
pub const TAKEOVER_STEPS: [&str; 4] = [
    "takeover-staged",
    "takeover-egress",
    "takeover-switched",
    "takeover-exchanged",
];

/// Starts `airlock <args>` built as `bin`, stopping itself at `step`.
pub fn spawn_stopping(f: &Fixture, bin: &Path, args: &[&str], step: &str) -> Child {
    f.bed
        .server
        .command(bin)
        .args(args)
        .env("AIRLOCK_PIN_ROOT", f.bed.bpffs.path())
        .env("NO_COLOR", "1")
        .env_remove("SSH_CONNECTION")
        .env_remove("AIRLOCK_LOG")
        .env(airlock::test_hook::STOP_AT, step)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting airlock")
}

/// Whether the program attached to the server's interface (as `ip link` says)
/// judges [`frames`] as the policy does: `None` when nothing is attached.
pub fn interface_verdicts_ok(f: &Fixture) -> Option<bool> {
    let output = f
        .bed
        .server
        .command("ip")
        .args(["-j", "link", "show", "dev", &f.bed.server_if])
        .output()
        .expect("ip link show");
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ip -j");
    let id = links[0]["xdp"]["prog"]["id"].as_u64()? as u32;
    let program = bpf::program_by_id(id).ok()?;
    Some(
        frames()
            .iter()
            .all(|(frame, expected)| bpf::test_run(&program, frame).ok() == Some(*expected)),
    )
}
