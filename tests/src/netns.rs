//! Throwaway network namespaces joined by a veth pair, a private bpffs, and real
//! sockets opened inside the namespaces. Everything is torn down in `Drop`, also when
//! a test panics. Traffic uses documentation addresses only and never leaves the
//! two namespaces.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Socket, Type};

/// Fails the test (never skips it) when it cannot run.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads BPF programs and creates network namespaces: run it as root \
         (cargo xtask test does; CI runs as root)"
    );
}

fn run(args: &[&str]) {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique name: veth and namespace names are limited to 15 bytes.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Namespace {
    name: String,
}

impl Namespace {
    pub fn new(name: String) -> Self {
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full);
    }

    /// A command to run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// A command that joins the namespace (`setns`) just before it runs, the way
    /// `nsenter --net` does: no `ip netns exec`, which also makes a mount namespace
    /// and mounts a /sys of the namespace (some milliseconds the bench's timings
    /// should not include). The program sees the host's /sys.
    pub fn entered_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut command = Command::new(program);
        // SAFETY: between fork and exec only setns(2) runs, which is
        // async-signal-safe; `file` is moved into the closure and outlives the spawn.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens belong
    /// to the namespace for their whole life.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into test namespace");
            f()
        })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A bpffs mounted on a fresh temporary directory in the host mount namespace, so
/// filters pinned by commands run under `ip netns exec` outlive those commands.
/// Unmounting it on drop releases every pin, and with them the filters. Mounted
/// 0700, root's alone, as a pin root must be (Airlock refuses one others could
/// write).
pub struct PrivateBpffs {
    dir: tempfile::TempDir,
}

impl PrivateBpffs {
    pub fn new() -> Self {
        Self::with_mode("0700")
    }

    /// With the root directory's mode `mode` (octal): bpffs's own default is 1777.
    pub fn with_mode(mode: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("airlock-bpffs-")
            .tempdir()
            .expect("temp dir");
        run(&[
            "mount",
            "-t",
            "bpf",
            "-o",
            &format!("mode={mode}"),
            "bpf",
            dir.path().to_str().expect("utf-8 path"),
        ]);
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for PrivateBpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Addresses of the test bed (all documentation ranges).
pub mod addr {
    pub const SERVER_V4: [&str; 3] = ["192.0.2.1", "198.51.100.1", "203.0.113.1"];
    pub const SERVER_V6: [&str; 3] = ["2001:db8:1::1", "2001:db8:100::1", "2001:db8:bad::1"];
    /// The "office": allowed by the demo and most test policies.
    pub const OFFICE_V4: &str = "198.51.100.10";
    pub const OFFICE_V6: &str = "2001:db8:100::10";
    /// A stranger: in no set.
    pub const STRANGER_V4: &str = "203.0.113.10";
    pub const STRANGER_V6: &str = "2001:db8:bad::10";
    /// A partner: used by tests that change who is allowed.
    pub const PARTNER_V4: &str = "192.0.2.10";
    pub const PARTNER_V6: &str = "2001:db8:1::10";
}

/// Two namespaces, `server` and `client`, joined by a veth pair; each side has one
/// address in each documentation /24 (and a /64 of 2001:db8::/32), so the client can
/// pick its source address per connection.
pub struct Testbed {
    pub server: Namespace,
    pub client: Namespace,
    pub server_if: String,
    pub client_if: String,
    pub bpffs: PrivateBpffs,
}

impl Testbed {
    pub fn new(prefix: &str) -> Self {
        let server = Namespace::new(unique_name(&format!("{prefix}s")));
        let client = Namespace::new(unique_name(&format!("{prefix}c")));
        let server_if = unique_name("alsrv");
        let client_if = unique_name("alcli");
        let bed = Self {
            server,
            client,
            server_if,
            client_if,
            bpffs: PrivateBpffs::new(),
        };
        bed.recreate_link();
        bed
    }

    /// Creates the veth pair and its addresses (again, after a test deleted it).
    pub fn recreate_link(&self) {
        let (server, client) = (&self.server, &self.client);
        let (server_if, client_if) = (&self.server_if, &self.client_if);
        run(&[
            "ip",
            "link",
            "add",
            client_if,
            "netns",
            client.name(),
            "type",
            "veth",
            "peer",
            "name",
            server_if,
            "netns",
            server.name(),
        ]);
        let client_v4 = [addr::PARTNER_V4, addr::OFFICE_V4, addr::STRANGER_V4];
        let client_v6 = [addr::PARTNER_V6, addr::OFFICE_V6, addr::STRANGER_V6];
        for (ns, dev, v4, v6) in [
            (server, server_if, addr::SERVER_V4, addr::SERVER_V6),
            (client, client_if, client_v4, client_v6),
        ] {
            for a in v4 {
                ns.ip(&["addr", "add", &format!("{a}/24"), "dev", dev]);
            }
            for a in v6 {
                // nodad: no duplicate address detection delay before the address works.
                ns.ip(&["addr", "add", &format!("{a}/64"), "dev", dev, "nodad"]);
            }
            ns.ip(&["link", "set", dev, "up"]);
        }
    }

    /// The server address in the same subnet as `client_source`.
    pub fn server_addr_for(client_source: IpAddr) -> IpAddr {
        let text = client_source.to_string();
        let server = match client_source {
            IpAddr::V4(_) => text.rsplit_once('.').map(|(net, _)| format!("{net}.1")),
            IpAddr::V6(_) => text.rsplit_once("::").map(|(net, _)| format!("{net}::1")),
        };
        server
            .and_then(|s| s.parse().ok())
            .expect("documentation address")
    }

    /// Tries one TCP connection from `source` to `port` on the server; true if the
    /// server answered (its greeting byte arrived) within `timeout`.
    pub fn connects(&self, source: &str, port: u16, timeout: Duration) -> bool {
        let source: IpAddr = source.parse().expect("address");
        let target = SocketAddr::new(Self::server_addr_for(source), port);
        self.client
            .spawn(move || {
                let domain = Domain::for_address(target);
                let socket = Socket::new(domain, Type::STREAM, None).expect("socket");
                socket
                    .bind(&SocketAddr::new(source, 0).into())
                    .expect("bind client source");
                if socket.connect_timeout(&target.into(), timeout).is_err() {
                    return false;
                }
                let mut stream: std::net::TcpStream = socket.into();
                stream.set_read_timeout(Some(timeout)).ok();
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).is_ok()
            })
            .join()
            .expect("client thread")
    }
}

impl Testbed {
    /// The other direction: the server (the filtered host) opens a TCP connection to
    /// `peer` on the client side, from its address in the same subnet, and reads the
    /// greeting byte of a [`Server`] there.
    pub fn connects_out(&self, peer: &str, port: u16, timeout: Duration) -> std::io::Result<()> {
        let peer: IpAddr = peer.parse().expect("address");
        let local = Self::server_addr_for(peer);
        self.server
            .spawn(move || {
                let socket = Socket::new(
                    Domain::for_address(SocketAddr::new(peer, 0)),
                    Type::STREAM,
                    None,
                )?;
                socket.bind(&SocketAddr::new(local, 0).into())?;
                socket.connect_timeout(&SocketAddr::new(peer, port).into(), timeout)?;
                let mut stream: std::net::TcpStream = socket.into();
                stream.set_read_timeout(Some(timeout))?;
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte)
            })
            .join()
            .expect("client thread")
    }
}

/// Service threads running inside a namespace until dropped: each polls the stop
/// flag it is given, and is joined on drop (also when a test panics).
#[derive(Default)]
pub struct Background {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Background {
    /// Runs `serve` on a thread in `ns` and returns once it has called `ready`
    /// (its socket is bound), or panics after 5 s.
    pub fn spawn(
        &mut self,
        ns: &Namespace,
        serve: impl FnOnce(&dyn Fn(), &AtomicBool) + Send + 'static,
    ) {
        let stop = Arc::clone(&self.stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        self.threads.push(ns.spawn(move || {
            let ready = move || {
                ready_tx.send(()).ok();
            };
            serve(&ready, &stop);
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("service thread did not start");
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A TCP server in a namespace that greets every connection with one byte; stops
/// when dropped.
pub struct Server {
    _threads: Background,
}

impl Server {
    /// Listens on every address of the namespace, IPv4 and IPv6, on `port`.
    pub fn start(ns: &Namespace, port: u16) -> Self {
        let mut threads = Background::default();
        for bind in [format!("0.0.0.0:{port}"), format!("[::]:{port}")] {
            threads.spawn(ns, move |ready, stop| {
                let address: SocketAddr = bind.parse().expect("bind address");
                let socket =
                    Socket::new(Domain::for_address(address), Type::STREAM, None).expect("socket");
                if address.is_ipv6() {
                    socket.set_only_v6(true).expect("v6only");
                }
                socket.set_reuse_address(true).expect("reuseaddr");
                socket.bind(&address.into()).expect("bind server");
                socket.listen(128).expect("listen");
                let listener: TcpListener = socket.into();
                listener.set_nonblocking(true).expect("nonblocking");
                ready();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.write_all(b"!");
                        }
                        Err(_) => thread::sleep(Duration::from_millis(2)),
                    }
                }
            });
        }
        Self { _threads: threads }
    }
}

impl Testbed {
    /// Sends `count` UDP datagrams from `source` to `port` on the server (no reply
    /// expected): for counting exactly what the filter saw.
    pub fn send_udp(&self, source: &str, port: u16, count: usize) {
        let source: IpAddr = source.parse().expect("address");
        let target = SocketAddr::new(Self::server_addr_for(source), port);
        self.client
            .spawn(move || {
                let socket =
                    std::net::UdpSocket::bind(SocketAddr::new(source, 0)).expect("bind udp");
                for _ in 0..count {
                    socket.send_to(b"airlock", target).expect("send udp");
                }
            })
            .join()
            .expect("udp thread");
    }

    /// Sends raw Ethernet frames from the client's interface (an AF_PACKET socket):
    /// frames no socket API would build, malformed ones.
    pub fn send_frames(&self, frames: Vec<Vec<u8>>) {
        let iface = self.client_if.clone();
        self.client
            .spawn(move || {
                let name = std::ffi::CString::new(iface).expect("interface name");
                // SAFETY: a socket this closure owns and closes; the name, the address
                // and each frame are valid for the lengths passed.
                unsafe {
                    let index = libc::if_nametoindex(name.as_ptr());
                    assert!(
                        index > 0,
                        "client interface: {}",
                        std::io::Error::last_os_error()
                    );
                    let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                    assert!(
                        fd >= 0,
                        "AF_PACKET socket: {}",
                        std::io::Error::last_os_error()
                    );
                    let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                    addr.sll_family = libc::AF_PACKET as u16;
                    addr.sll_ifindex = index as i32;
                    for frame in &frames {
                        let sent = libc::sendto(
                            fd,
                            frame.as_ptr().cast(),
                            frame.len(),
                            0,
                            (&raw const addr).cast(),
                            std::mem::size_of::<libc::sockaddr_ll>() as u32,
                        );
                        let error = std::io::Error::last_os_error();
                        assert_eq!(sent, frame.len() as isize, "sending a raw frame: {error}");
                    }
                    libc::close(fd);
                }
            })
            .join()
            .expect("raw frame thread");
    }

    /// An HTTP GET from inside the server namespace (where the agent's loopback-bound
    /// metrics server lives). Returns (status code, body).
    pub fn http_get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        self.server
            .spawn(move || {
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                stream.write_all(request.as_bytes()).ok()?;
                let mut response = String::new();
                stream.read_to_string(&mut response).ok()?;
                let status = response.split_whitespace().nth(1)?.parse().ok()?;
                let body = response.split_once("\r\n\r\n")?.1.to_owned();
                Some((status, body))
            })
            .join()
            .expect("http thread")
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
