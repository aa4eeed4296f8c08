//! The host agent as the tests run it: started in the server namespace of a
//! [`Fixture`] (its log, lock and policy in the fixture's scratch directory), its
//! HTTP endpoint read from there, and killed when dropped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use crate::{
    cli::airlock_bin,
    fixture::{Fixture, PORT},
    netns::wait_until,
};

pub const UDP_PORT: u16 = 5353;
pub const METRICS: u16 = 9477;
/// How long a policy change may take to be in force.
pub const RELOAD: Duration = Duration::from_secs(2);

/// A policy letting `from` reach PORT/tcp and UDP_PORT/udp.
pub fn policy_text(f: &Fixture, from: &str) -> String {
    format!(
        "version: 1\ninterfaces: [{}]\nsets:\n  office: [198.51.100.0/24, \"2001:db8:100::/48\"]\nrules:\n  - name: db\n    ports: [{PORT}/tcp]\n    from: [{from}]\n  - name: dns\n    ports: [{UDP_PORT}/udp]\n    from: [{from}]\n",
        f.bed.server_if
    )
}

pub fn policy_path(f: &Fixture) -> PathBuf {
    f.dir.path().join("policy.yaml")
}

pub fn write_policy(f: &Fixture, text: &str) {
    fs::write(policy_path(f), text).expect("write policy");
}

/// Replaces the policy the way editors do: write a temporary file, rename it over.
pub fn rename_policy(f: &Fixture, text: &str) {
    let temp = f.dir.path().join(".policy.yaml.swp");
    fs::write(&temp, text).expect("write temp");
    fs::rename(&temp, policy_path(f)).expect("rename");
}

pub fn metrics(f: &Fixture) -> String {
    match f.bed.http_get(METRICS, "/metrics") {
        Some((200, body)) => body,
        other => panic!("scraping /metrics: {other:?}"),
    }
}

pub fn metric(f: &Fixture, series: &str) -> f64 {
    metric_value(&metrics(f), series)
}

/// The sum of every series of metric `name`, whatever its labels (0 when absent).
pub fn metric_sum(f: &Fixture, name: &str) -> f64 {
    metrics(f)
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

pub fn ready(f: &Fixture) -> bool {
    matches!(f.bed.http_get(METRICS, "/readyz"), Some((200, _)))
}

/// The agent's lock directory lives in the fixture's scratch directory.
pub fn state_dir(f: &Fixture) -> PathBuf {
    f.dir.path().join("state")
}

/// The value of one series in Prometheus text (0 when absent).
pub fn metric_value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    /// Starts the agent in the server namespace, behind `wrapper` (e.g. setpriv),
    /// and waits until it is ready.
    pub fn start(f: &Fixture, wrapper: &[&str], policy: &Path, extra: &[&str]) -> Self {
        let agent = Self::spawn(f, wrapper, policy, extra);
        assert!(
            wait_until(Duration::from_secs(10), || ready(f)),
            "agent not ready within 10 s; log:\n{}",
            agent.log()
        );
        agent
    }

    /// Starts the agent and waits only for its HTTP endpoint to answer (it need
    /// not become ready: an invalid policy, say).
    pub fn spawn(f: &Fixture, wrapper: &[&str], policy: &Path, extra: &[&str]) -> Self {
        Self::spawn_with(
            f,
            wrapper,
            |command| {
                command.arg("-f").arg(policy);
            },
            extra,
        )
    }

    /// [`Agent::spawn`] with the policy's source given by `source` (its arguments,
    /// its environment), e.g. the Kubernetes source's.
    pub fn spawn_with(
        f: &Fixture,
        wrapper: &[&str],
        source: impl FnOnce(&mut Command),
        extra: &[&str],
    ) -> Self {
        let log = f.dir.path().join(format!("agent-{}.log", rand_suffix()));
        let log_file = fs::File::create(&log).expect("log file");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = f.bed.server.command(program);
                command.args(args).arg(airlock_bin());
                command
            }
            None => f.bed.server.command(airlock_bin()),
        };
        command.arg("agent");
        source(&mut command);
        let child = command
            .arg("--pin-root")
            .arg(f.bed.bpffs.path())
            .arg("--state-dir")
            .arg(state_dir(f))
            .args(["--metrics-addr", &format!("127.0.0.1:{METRICS}")])
            .args(["--log-format", "json", "--reconcile-interval", "1"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start agent");
        let agent = Self { child, log };
        assert!(
            wait_until(Duration::from_secs(10), || f
                .bed
                .http_get(METRICS, "/healthz")
                .is_some()),
            "agent not serving within 10 s; log:\n{}",
            agent.log()
        );
        agent
    }

    /// Waits for the agent to count a repair (its reconcile runs every second here).
    pub fn wait_for_repair(&self, f: &Fixture) {
        assert!(
            wait_until(Duration::from_secs(5), || metric(
                f,
                "airlock_attach_repairs_total"
            ) >= 1.0),
            "no repair counted; log:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal agent");
    }

    /// Sends `signal` and waits for the agent to exit.
    pub fn stop(mut self, signal: nix::sys::signal::Signal) -> String {
        self.signal(signal);
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rand_suffix() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) as u64
}

/// `n` distinct IPv4 hosts in 10.0.0.0/8 (outside the test bed's addresses), one a
/// line: an import large enough to make a reload take a while.
pub fn bulk_hosts(n: usize) -> String {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut hosts = String::with_capacity(n * 12);
    for _ in 0..n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let host = 0x0a00_0000 | (state as u32 & 0x00ff_ffff);
        hosts.push_str(&std::net::Ipv4Addr::from(host).to_string());
        hosts.push('\n');
    }
    hosts
}

/// An HTTP/1.0 GET to the agent from the calling thread (which must be in the
/// server namespace): the status code and body, or `None` if it did not answer
/// within 5 s.
pub fn get(path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", METRICS)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// What polling an endpoint saw: each answer's status (0: none) and how long it
/// took, request to last byte.
pub type Answers = Vec<(u16, Duration)>;

/// Requests `path` over and over from inside the server namespace, every `pause`,
/// until `stop` is set (and at most for a minute).
pub fn poll(
    f: &Fixture,
    path: &'static str,
    pause: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Answers> {
    f.bed.server.spawn(move || {
        let mut answers = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            let started = std::time::Instant::now();
            let status = get(path).map_or(0, |(status, _)| status);
            answers.push((status, started.elapsed()));
            std::thread::sleep(pause);
        }
        answers
    })
}
