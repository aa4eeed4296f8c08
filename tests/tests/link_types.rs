//! Interfaces that are not Ethernet. A tun device (IFF_TUN) has no link-layer
//! header: XDP hands the program the IP header at offset 0, so Airlock must attach
//! its IP-first programs there, and refuse link types it does not read. The test is
//! the other end of a real tun device in a namespace it creates: it writes IP packets
//! into the device's file descriptor (they arrive on the interface as received
//! packets) and reads back what the host sends. Needs root.

use std::{
    fs::File,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    process::Stdio,
    time::{Duration, Instant},
};

use airlock_integration::{
    cli::{Run, airlock_bin, airlock_in},
    netns::{Namespace, PrivateBpffs, Server, require_root, unique_name, wait_until},
};

const PORT: u16 = 5432;
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const OFFICE_V4: &str = "198.51.100.10";
const OFFICE_V6: &str = "2001:db8:100::10";
const STRANGER_V4: &str = "203.0.113.10";
const STRANGER_V6: &str = "2001:db8:bad::10";

/// A tun device in a namespace, with its file descriptor: the far end of a
/// point-to-point link whose packets the test writes and reads itself.
struct Tun {
    file: File,
    name: String,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: u16 = 0x0001;
const IFF_NO_PI: u16 = 0x1000;

impl Tun {
    /// Creates the device in `ns` (it belongs to the namespace its creator is in),
    /// with the server's addresses and routes back to every test source through it.
    fn new(ns: &Namespace) -> Self {
        let name = unique_name("altun");
        let device = name.clone();
        let file = ns
            .spawn(move || {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/net/tun")
                    .expect("open /dev/net/tun");
                // struct ifreq: the name, then ifr_flags.
                let mut ifreq = [0u8; 40];
                ifreq[..device.len()].copy_from_slice(device.as_bytes());
                ifreq[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
                // SAFETY: TUNSETIFF reads and writes a struct ifreq, which is 40 bytes.
                let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) };
                assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
                file
            })
            .join()
            .expect("tun thread");
        let nonblocking = nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(nonblocking)).expect("O_NONBLOCK");
        ns.ip(&["addr", "add", "198.51.100.1/24", "dev", &name]);
        ns.ip(&["addr", "add", "2001:db8:100::1/64", "dev", &name, "nodad"]);
        ns.ip(&["link", "set", &name, "up"]);
        ns.ip(&["route", "add", "203.0.113.0/24", "dev", &name]);
        ns.ip(&["route", "add", "2001:db8:bad::/64", "dev", &name]);
        Self { file, name }
    }

    fn send(&mut self, packet: &[u8]) {
        self.file.write_all(packet).expect("write to tun");
    }

    /// Reads packets the host sends until one satisfies `wanted` or `timeout` passes.
    fn receive(&mut self, timeout: Duration, wanted: impl Fn(&Packet) -> bool) -> Option<Packet> {
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 2048];
        while Instant::now() < deadline {
            match self.file.read(&mut buffer) {
                Ok(len) => {
                    if let Some(packet) = Packet::parse(&buffer[..len])
                        && wanted(&packet)
                    {
                        return Some(packet);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("reading tun: {e}"),
            }
        }
        None
    }

    /// Sends a SYN from `source` to the server's PORT and says whether a SYN-ACK
    /// came back within `timeout`.
    fn answered(&mut self, source: &str, sport: u16, timeout: Duration) -> bool {
        let source: IpAddr = source.parse().expect("address");
        let server = server_for(source);
        self.send(&tcp_packet(source, server, sport, PORT, 1000, 0, SYN));
        self.receive(timeout, |p| {
            p.src == server && p.dst == source && p.dport == sport && p.flags == SYN | ACK
        })
        .is_some()
    }
}

fn server_for(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(_) => SERVER_V4.into(),
        IpAddr::V6(_) => SERVER_V6.into(),
    }
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// A TCP segment as the host sent it.
#[derive(Debug)]
struct Packet {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    flags: u8,
}

impl Packet {
    fn parse(bytes: &[u8]) -> Option<Self> {
        let (src, dst, tcp): (IpAddr, IpAddr, &[u8]) = match bytes.first()? >> 4 {
            4 => {
                let ihl = usize::from(bytes[0] & 0xf) * 4;
                if bytes.get(9) != Some(&6) {
                    return None;
                }
                let src: [u8; 4] = bytes.get(12..16)?.try_into().ok()?;
                let dst: [u8; 4] = bytes.get(16..20)?.try_into().ok()?;
                (src.into(), dst.into(), bytes.get(ihl..)?)
            }
            6 => {
                if bytes.get(6) != Some(&6) {
                    return None;
                }
                let src: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
                let dst: [u8; 16] = bytes.get(24..40)?.try_into().ok()?;
                (src.into(), dst.into(), bytes.get(40..)?)
            }
            _ => return None,
        };
        Some(Self {
            src,
            dst,
            sport: u16::from_be_bytes(tcp.get(0..2)?.try_into().ok()?),
            dport: u16::from_be_bytes(tcp.get(2..4)?.try_into().ok()?),
            seq: u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?),
            flags: *tcp.get(13)?,
        })
    }
}

/// An IPv4 or IPv6 packet carrying a TCP header with correct checksums (the stack
/// checks them on a tun device).
fn tcp_packet(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, flags]);
    tcp.extend_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    let mut pseudo = Vec::new();
    let mut packet = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            let total = (20 + tcp.len()) as u16;
            packet.extend_from_slice(&[0x45, 0]);
            packet.extend_from_slice(&total.to_be_bytes());
            packet.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
            packet.extend_from_slice(&s.octets());
            packet.extend_from_slice(&d.octets());
            let sum = checksum(&packet);
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
            packet.extend_from_slice(&[0x60, 0, 0, 0]);
            packet.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            packet.extend_from_slice(&[6, 64]);
            packet.extend_from_slice(&s.octets());
            packet.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&tcp);
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn policy(dir: &std::path::Path, iface: &str, default: &str) -> std::path::PathBuf {
    let path = dir.join("policy.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\ninterfaces: [{iface}]\ndefault: {default}\nsets:\n  office: [198.51.100.0/24, \"2001:db8:100::/48\"]\nrules:\n  - name: db\n    ports: [{PORT}/tcp]\n    from: [office]\n"
        ),
    )
    .expect("write policy");
    path
}

fn status(ns: &Namespace, bpffs: &PrivateBpffs) -> serde_json::Value {
    let run = airlock_in(ns, bpffs.path(), &["status", "-o", "json"]);
    assert_eq!(run.code, 0, "status: {}", run.stderr);
    serde_json::from_str(&run.stdout).expect("status JSON")
}

fn packets(value: &serde_json::Value) -> u64 {
    value["packets"].as_u64().unwrap_or(0)
}

#[test]
fn a_tun_device_is_filtered_from_the_ip_header_and_counted_right() {
    require_root();
    let ns = Namespace::new(unique_name("altn"));
    let bpffs = PrivateBpffs::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let _server = Server::start(&ns, PORT);
    let mut tun = Tun::new(&ns);
    let wait = Duration::from_millis(500);

    // Without a filter everyone is answered: the path back through the tun works,
    // so a missing answer later is the filter's doing.
    let mut sport = 40000;
    for source in [OFFICE_V4, OFFICE_V6, STRANGER_V4, STRANGER_V6] {
        sport += 1;
        assert!(
            tun.answered(source, sport, wait),
            "{source} unanswered without a filter"
        );
    }

    let p = policy(dir.path(), &tun.name, "pass");
    let run = airlock_in(
        &ns,
        bpffs.path(),
        &["apply", "-f", p.to_str().expect("utf-8")],
    );
    assert_eq!(run.code, 0, "apply on a tun device: {}", run.stderr);

    for source in [OFFICE_V4, OFFICE_V6] {
        sport += 1;
        assert!(
            tun.answered(source, sport, wait),
            "{source} is allowed and must be answered"
        );
    }
    for source in [STRANGER_V4, STRANGER_V6] {
        sport += 1;
        assert!(
            !tun.answered(source, sport, wait),
            "{source} is in no set and must get no SYN-ACK"
        );
    }

    // Exactly what was written: two SYNs allowed, two refused, nothing taken for
    // "not IP" (what the Ethernet program would have made of them).
    let status = status(&ns, &bpffs);
    let iface = &status["interfaces"][0];
    assert_eq!(iface["iface"], tun.name.as_str(), "{status}");
    assert_eq!(iface["attachment"], "attached", "{status}");
    assert_eq!(packets(&iface["rules"][0]["allowed"]), 2, "{status}");
    assert_eq!(packets(&iface["rules"][0]["refused"]), 2, "{status}");
    assert_eq!(packets(&iface["reasons"]["rule_refused"]), 2, "{status}");
    assert_eq!(packets(&iface["reasons"]["non_ip"]), 0, "{status}");
    assert_eq!(packets(&iface["reasons"]["malformed"]), 0, "{status}");

    // `explain --live` runs its probe through the IP-first program without an
    // Ethernet header, as the tun delivers it: kernel and model agree.
    for (source, verdict) in [(OFFICE_V4, "pass"), (STRANGER_V6, "drop")] {
        let args = [
            "explain",
            "-f",
            p.to_str().expect("utf-8"),
            "--src",
            source,
            "--port",
            "5432/tcp",
            "--live",
            "-o",
            "json",
        ];
        let run = airlock_in(&ns, bpffs.path(), &args);
        assert_eq!(run.code, 0, "explain --live: {}{}", run.stdout, run.stderr);
        let answer: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
        assert_eq!(answer["kernel"]["verdict"], verdict, "{answer}");
        assert_eq!(answer["agree"], true, "{answer}");
    }

    // The egress program is the IP-first one too: under `default: drop` a reply to
    // a connection the host opens through the tun still passes.
    let p = policy(dir.path(), &tun.name, "drop");
    let run = airlock_in(
        &ns,
        bpffs.path(),
        &["apply", "-f", p.to_str().expect("utf-8")],
    );
    assert_eq!(run.code, 0, "re-apply: {}", run.stderr);
    let peer: IpAddr = STRANGER_V4.parse().expect("address");
    let connect = ns.spawn(move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .connect_timeout(&SocketAddr::new(peer, 8080).into(), Duration::from_secs(3))
            .is_ok()
    });
    let syn = tun
        .receive(Duration::from_secs(2), |p| {
            p.dst == peer && p.dport == 8080 && p.flags == SYN
        })
        .expect("the host's SYN out through the tun");
    let reply = tcp_packet(
        peer,
        syn.src,
        8080,
        syn.sport,
        77,
        syn.seq.wrapping_add(1),
        SYN | ACK,
    );
    tun.send(&reply);
    let ack = tun.receive(Duration::from_secs(2), |p| {
        p.dst == peer && p.dport == 8080 && p.flags & ACK != 0 && p.flags & SYN == 0
    });
    assert!(
        ack.is_some(),
        "the SYN-ACK to the host's own connection was dropped"
    );
    assert!(
        connect.join().expect("connect thread"),
        "the host's connect did not complete"
    );
}

fn agent_log_until(
    ns: &Namespace,
    bpffs: &PrivateBpffs,
    policy: &std::path::Path,
    needle: &str,
) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("agent.log");
    let mut child = ns
        .command(airlock_bin())
        .args(["agent", "-f"])
        .arg(policy)
        .arg("--pin-root")
        .arg(bpffs.path())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--metrics-addr", "127.0.0.1:9477", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("log file"))
        .spawn()
        .expect("start agent");
    let found = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains(needle))
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(found, "agent log lacks {needle:?}:\n{text}");
    text
}

#[test]
fn an_unsupported_link_type_is_refused_by_apply_and_agent_and_nothing_is_attached() {
    require_root();
    let ns = Namespace::new(unique_name("allo"));
    let bpffs = PrivateBpffs::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let p = policy(dir.path(), "lo", "pass");
    let expected = "interface lo is the loopback device (link type loopback (772))";

    let run: Run = airlock_in(
        &ns,
        bpffs.path(),
        &["apply", "-f", p.to_str().expect("utf-8")],
    );
    assert_eq!(run.code, 2, "refused like other bad input: {}", run.stderr);
    assert!(run.stderr.contains(expected), "{}", run.stderr);
    // `--iface` names it the same way.
    let run = airlock_in(
        &ns,
        bpffs.path(),
        &["apply", "-f", p.to_str().expect("utf-8"), "--iface", "lo"],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);

    let log = agent_log_until(&ns, &bpffs, &p, expected);
    assert!(log.contains("policy rejected"), "{log}");

    let no_xdp = ns
        .spawn(|| {
            airlock::link_type::query("lo")
                .expect("rtnetlink")
                .expect("lo")
                .xdp
        })
        .join()
        .expect("query thread");
    assert_eq!(no_xdp, Default::default(), "nothing attached to lo");
    assert_eq!(status(&ns, &bpffs)["interfaces"], serde_json::json!([]));
}

/// The name of the XDP program the kernel runs on `iface` in `ns`.
fn xdp_program_on(ns: &Namespace, iface: &str) -> Option<String> {
    let iface = iface.to_owned();
    ns.spawn(move || {
        let xdp = airlock::link_type::query(&iface)
            .expect("rtnetlink")
            .expect("interface exists")
            .xdp;
        airlock::loader::program_name(xdp.driver.max(xdp.generic))
    })
    .join()
    .expect("query thread")
}

#[test]
fn each_device_gets_the_program_for_its_frames() {
    require_root();
    let ns = Namespace::new(unique_name("alty"));
    let bpffs = PrivateBpffs::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let [tun, tap, veth, peer, bridge, macvlan] =
        ["altu", "alta", "alve", "alpe", "albr", "almv"].map(unique_name);
    ns.ip(&["tuntap", "add", "dev", &tun, "mode", "tun"]);
    ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    ns.ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
    ns.ip(&["link", "add", &bridge, "type", "bridge"]);
    ns.ip(&["link", "add", &macvlan, "link", &peer, "type", "macvlan"]);
    let devices = [&tun, &tap, &veth, &bridge, &macvlan];
    for device in devices {
        ns.ip(&["link", "set", device, "up"]);
    }
    let mut args = vec!["apply".to_owned(), "-f".to_owned()];
    args.push(policy(dir.path(), "auto", "pass").display().to_string());
    for device in devices {
        args.extend(["--iface".to_owned(), device.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = airlock_in(&ns, bpffs.path(), &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for (device, program) in [
        (&tun, "airlock_xdp_l3"),
        (&tap, "airlock_xdp"),
        (&veth, "airlock_xdp"),
        (&bridge, "airlock_xdp"),
        (&macvlan, "airlock_xdp"),
    ] {
        assert_eq!(
            xdp_program_on(&ns, device).as_deref(),
            Some(program),
            "{device}"
        );
    }
}

#[test]
fn a_filter_pinned_for_the_wrong_frame_layout_is_replaced() {
    require_root();
    let ns = Namespace::new(unique_name("alwr"));
    let bpffs = PrivateBpffs::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let tun = unique_name("altu");
    ns.ip(&["tuntap", "add", "dev", &tun, "mode", "tun"]);
    ns.ip(&["link", "set", &tun, "up"]);
    // What an Airlock from before link types were told apart left on a tun device:
    // the Ethernet program, attached and pinned where apply looks for it.
    let pin_dir = bpffs.path().join(&tun);
    std::fs::create_dir(&pin_dir).expect("pin dir");
    let (device, link_pin) = (tun.clone(), pin_dir.join(airlock::loader::LINK_PIN));
    let program_pin = pin_dir.join(airlock::loader::PROGRAM_PIN);
    ns.spawn(move || {
        let mut filter = airlock::loader::LoadedFilter::load().expect("load");
        let program = filter.program().expect("program");
        program.pin(&program_pin).expect("pin program");
        let id = program
            .attach(&device, aya::programs::XdpMode::Skb)
            .expect("attach");
        let link = program.take_link(id).expect("link");
        let link = aya::programs::links::FdLink::try_from(link).expect("fd link");
        link.pin(&link_pin).expect("pin link");
    })
    .join()
    .expect("attach thread");
    assert_eq!(xdp_program_on(&ns, &tun).as_deref(), Some("airlock_xdp"));

    let p = policy(dir.path(), &tun, "pass");
    let run = airlock_in(
        &ns,
        bpffs.path(),
        &["apply", "-f", p.to_str().expect("utf-8")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("reads the wrong frame layout")
            && run.stderr.contains("program=\"airlock_xdp\""),
        "the replacement is said: {}",
        run.stderr
    );
    assert_eq!(xdp_program_on(&ns, &tun).as_deref(), Some("airlock_xdp_l3"));
}
