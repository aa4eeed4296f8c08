//! Stateful return traffic under `default: drop` (docs/policy.md, verdict rule 6): the
//! host's own connections get their replies; nobody else's packets get in by
//! pretending to be replies.
//!
//! First the two real programs through BPF_PROG_TEST_RUN (the egress program
//! records a flow from a packet the host sends, the XDP program passes its reply),
//! then real TCP and UDP between two namespaces with the CLI-applied filter.
//! Needs root; fails (never skips) without it.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use airlock::loader::{Flow, monotonic_ns};
use airlock::reference;
use airlock_common::{
    FLOW_TABLE_ENTRIES, Reason, TCP_CLOSING_TIMEOUT_NS, TCP_SYN_TIMEOUT_NS, TCP_TIMEOUT_NS,
};
use airlock_integration::{
    fixture::{Fixture, PORT, REFUSED},
    kernel::{Harness, XDP_DROP, XDP_PASS, action_name},
    netns::{Background, Namespace, Server, Testbed, addr, wait_until},
    packet::{FrameSpec, SOURCE_PORT, TCP_FLAGS_OFFSET, Transport, mirror, transport_offset},
};
use socket2::{Domain, Socket, Type};

const STRANGER: &str = addr::STRANGER_V4;
const STRANGER_V6: &str = addr::STRANGER_V6;
const DENIED: &str = "203.0.113.66";

/// Default drop; one rule on 5432/tcp for the office; a denied address.
fn policy(default: &str, mode: &str) -> String {
    format!(
        "version: 1\ninterfaces: [eth0]\ndefault: {default}\nmode: {mode}\n\
         deny: [{DENIED}]\nsets:\n  office: [198.51.100.0/24]\n\
         rules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office]\n"
    )
}

/// Runs `spec` through XDP and checks the kernel against both the obvious
/// expectation and the reference model told whether the packet answers an open
/// flow (`answers`).
fn expect(h: &mut Harness, spec: FrameSpec, answers: bool, action: u32, reason: Reason) {
    let frame = spec.build();
    let policy = h.policy.as_ref().expect("policy applied");
    let model = reference::verdict_for(policy, &frame.class, answers);
    let kernel = h.run(&frame.bytes);
    assert_eq!(
        (action_name(kernel.action), kernel.reason),
        (action_name(action), reason),
        "kernel, for {:?}",
        frame.spec
    );
    assert_eq!(
        (model.pass, model.reason),
        (action == XDP_PASS, reason),
        "reference model, for {:?}",
        frame.spec
    );
}

/// A peer's TCP segment to `port` that can answer a connection the host opened: its
/// SYN-ACK. (A pure SYN cannot: see `a_peers_syn_never_passes_as_a_reply`.)
fn tcp_reply(peer: &str, port: u16) -> FrameSpec {
    FrameSpec::ip(
        peer.parse().unwrap(),
        Transport::Tcp {
            dst_port: port,
            flags: reference::TCP_SYN | reference::TCP_ACK,
        },
    )
}

/// The host sends the packet that `reply` answers (for TCP, its SYN); returns the
/// egress program's return value.
fn host_sends_what_answers(h: &mut Harness, reply: &FrameSpec) -> i32 {
    let frame = reply.build();
    let mut bytes = frame.bytes;
    let l4 = mirror(&mut bytes);
    if let reference::PacketClass::Ip {
        l4: reference::L4::Tcp { .. },
        ..
    } = frame.class
    {
        bytes[l4 + TCP_FLAGS_OFFSET] = reference::TCP_SYN;
    }
    h.run_egress(&bytes)
}

/// The host sends a TCP segment with `flags` on the flow `reply` answers.
fn host_sends_tcp_flags(h: &mut Harness, reply: &FrameSpec, flags: u8) -> i32 {
    let mut bytes = reply.build().bytes;
    let l4 = mirror(&mut bytes);
    bytes[l4 + TCP_FLAGS_OFFSET] = flags;
    h.run_egress(&bytes)
}

const TCX_NEXT: i32 = -1;

#[test]
fn replies_to_flows_the_host_opened_pass_and_nothing_else_does() {
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    for peer in [STRANGER, STRANGER_V6] {
        let tcp_answer = tcp_reply(peer, 33000);
        let udp_reply = FrameSpec::udp(peer, 33001);
        // Before the host sent anything, the "replies" are unsolicited.
        expect(
            &mut h,
            tcp_answer.clone(),
            false,
            XDP_DROP,
            Reason::DefaultDrop,
        );
        expect(
            &mut h,
            udp_reply.clone(),
            false,
            XDP_DROP,
            Reason::DefaultDrop,
        );

        assert_eq!(host_sends_what_answers(&mut h, &tcp_answer), TCX_NEXT);
        assert_eq!(host_sends_what_answers(&mut h, &udp_reply), TCX_NEXT);
        expect(&mut h, tcp_answer, true, XDP_PASS, Reason::ReturnTraffic);
        expect(&mut h, udp_reply, true, XDP_PASS, Reason::ReturnTraffic);

        // The same peer to another port, or over the other protocol: not a reply.
        expect(
            &mut h,
            tcp_reply(peer, 33002),
            false,
            XDP_DROP,
            Reason::DefaultDrop,
        );
        expect(
            &mut h,
            FrameSpec::udp(peer, 33000),
            false,
            XDP_DROP,
            Reason::DefaultDrop,
        );
    }
    // Another peer to the same port.
    expect(
        &mut h,
        tcp_reply("203.0.113.11", 33000),
        false,
        XDP_DROP,
        Reason::DefaultDrop,
    );
    // The same peer from another source port.
    h.open_flow(&Flow {
        peer: STRANGER.parse().unwrap(),
        protocol: 6,
        local_port: 34000,
        peer_port: SOURCE_PORT + 1,
    });
    expect(
        &mut h,
        tcp_reply(STRANGER, 34000),
        false,
        XDP_DROP,
        Reason::DefaultDrop,
    );

    // Echo: the host's echo request lets its reply in; the peer's own request is not.
    for (peer, request, reply) in [(STRANGER, 8, 0), (STRANGER_V6, 128, 129)] {
        expect(
            &mut h,
            FrameSpec::icmp(peer, reply),
            false,
            XDP_DROP,
            Reason::DefaultDrop,
        );
        assert_eq!(
            host_sends_what_answers(&mut h, &FrameSpec::icmp(peer, request)),
            TCX_NEXT
        );
        expect(
            &mut h,
            FrameSpec::icmp(peer, reply),
            true,
            XDP_PASS,
            Reason::ReturnTraffic,
        );
        expect(
            &mut h,
            FrameSpec::icmp(peer, request),
            true,
            XDP_DROP,
            Reason::DefaultDrop,
        );
        // A reply carrying another echo identifier answers nothing the host sent.
        let mut other_id = FrameSpec::icmp(peer, reply).build().bytes;
        let l4 = transport_offset(&other_id);
        other_id[l4 + 4..l4 + 6].copy_from_slice(&7u16.to_be_bytes());
        let outcome = h.run(&other_id);
        assert_eq!(
            (outcome.action, outcome.reason),
            (XDP_DROP, Reason::DefaultDrop),
            "echo reply with another identifier from {peer}"
        );
    }

    let flows = h.flows.flows().expect("read flows");
    let tcp = Flow {
        peer: STRANGER.parse().unwrap(),
        protocol: 6,
        local_port: 33000,
        peer_port: SOURCE_PORT,
    };
    assert!(
        flows.iter().any(|(flow, _)| *flow == tcp),
        "the egress program recorded {tcp:?}: {flows:?}"
    );
}

/// A segment with SYN and without ACK opens a connection: it never answers one the
/// host opened, so the XDP program refuses it without asking the flow table (a SYN
/// flood to an uncovered port costs no lookup). TCP simultaneous open, the one
/// exception, is given up for that.
#[test]
fn a_peers_syn_never_passes_as_a_reply() {
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    for peer in [STRANGER, STRANGER_V6] {
        let reply = tcp_reply(peer, 33070);
        assert_eq!(host_sends_what_answers(&mut h, &reply), TCX_NEXT);
        expect(&mut h, reply, true, XDP_PASS, Reason::ReturnTraffic);
        for flags in [0x02, 0x03, 0x06, 0x0a, 0x22] {
            let syn = FrameSpec::ip(
                peer.parse().unwrap(),
                Transport::Tcp {
                    dst_port: 33070,
                    flags,
                },
            );
            expect(&mut h, syn, true, XDP_DROP, Reason::DefaultDrop);
        }
        // Every other flag combination on the open flow passes, RST alone included
        // (the answer to a segment carrying ACK has no ACK of its own).
        for flags in [0x10, 0x12, 0x04, 0x14, 0x11, 0x18, 0x01, 0x00] {
            let segment = FrameSpec::ip(
                peer.parse().unwrap(),
                Transport::Tcp {
                    dst_port: 33070,
                    flags,
                },
            );
            expect(&mut h, segment, true, XDP_PASS, Reason::ReturnTraffic);
        }
    }
}

#[test]
fn rules_deny_and_default_pass_come_before_return_traffic() {
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    // The host talked to a stranger from the covered port: the rule still decides.
    let covered = tcp_reply(STRANGER, PORT);
    host_sends_what_answers(&mut h, &covered);
    expect(&mut h, covered, true, XDP_DROP, Reason::RuleRefused);
    // ... and such packets are not even recorded: a busy service's connections must
    // not crowd the host's own outgoing flows out of the table.
    let flows = h.flows.flows().expect("read flows");
    assert!(
        flows.iter().all(|(flow, _)| flow.local_port != PORT),
        "a flow from the covered port was recorded: {flows:?}"
    );
    // A denied source stays denied even when the host talked to it.
    let denied = tcp_reply(DENIED, 33000);
    host_sends_what_answers(&mut h, &denied);
    expect(&mut h, denied, true, XDP_DROP, Reason::Deny);
    // Under default: pass there is nothing to decide.
    let reply = FrameSpec::udp(STRANGER, 33003);
    host_sends_what_answers(&mut h, &reply);
    h.apply(&policy("pass", "enforce"));
    expect(&mut h, reply.clone(), true, XDP_PASS, Reason::DefaultPass);
    // Monitor mode judges (and counts) exactly as enforce mode.
    h.apply(&policy("drop", "monitor"));
    expect(&mut h, reply, true, XDP_PASS, Reason::ReturnTraffic);
    expect(
        &mut h,
        FrameSpec::udp(STRANGER, 33004),
        false,
        XDP_PASS,
        Reason::DefaultDrop,
    );
}

#[test]
fn a_flow_ends_when_the_host_resets_it_and_winds_down_after_its_fin() {
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    let reply = tcp_reply(STRANGER, 33010);
    host_sends_what_answers(&mut h, &reply);
    expect(&mut h, reply.clone(), true, XDP_PASS, Reason::ReturnTraffic);
    assert_eq!(host_sends_tcp_flags(&mut h, &reply, 0x04), TCX_NEXT); // RST
    expect(&mut h, reply.clone(), false, XDP_DROP, Reason::DefaultDrop);

    // FIN|ACK: still open, but on the short closing timeout, and the last ACK the
    // host sends afterwards does not put it back on the long one.
    host_sends_what_answers(&mut h, &reply);
    assert_eq!(host_sends_tcp_flags(&mut h, &reply, 0x11), TCX_NEXT);
    assert_eq!(host_sends_tcp_flags(&mut h, &reply, 0x10), TCX_NEXT);
    expect(&mut h, reply, true, XDP_PASS, Reason::ReturnTraffic);
    let flows = h.flows.flows().expect("read flows");
    let (_, state) = flows
        .iter()
        .find(|(flow, _)| flow.local_port == 33010)
        .expect("flow present");
    assert_eq!(state.closing, 1);
    assert!(
        state.expires_ns <= monotonic_ns() + TCP_CLOSING_TIMEOUT_NS,
        "closing flow expires within the closing timeout"
    );
}

#[test]
fn connections_a_peer_opened_are_never_taken_for_ones_the_host_opened() {
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    let reply = tcp_reply(STRANGER, 33040);
    // The host answering someone else's SYN (SYN-ACK), or any segment of a
    // connection it did not open: nothing is recorded.
    assert_eq!(host_sends_tcp_flags(&mut h, &reply, 0x12), TCX_NEXT);
    expect(&mut h, reply.clone(), false, XDP_DROP, Reason::DefaultDrop);
    assert_eq!(host_sends_tcp_flags(&mut h, &reply, 0x18), TCX_NEXT); // PSH|ACK
    assert_eq!(host_sends_tcp_flags(&mut h, &reply, 0x11), TCX_NEXT); // FIN|ACK
    expect(&mut h, reply.clone(), false, XDP_DROP, Reason::DefaultDrop);
    assert!(h.flows.flows().expect("read flows").is_empty());

    // The host's own SYN opens it on the short connect timeout; its first ACK
    // (the connection is up) moves it to the long one.
    host_sends_what_answers(&mut h, &reply);
    expect(&mut h, reply.clone(), true, XDP_PASS, Reason::ReturnTraffic);
    let expiry =
        |h: &Harness| h.flows.flows().expect("read flows")[0].1.expires_ns - monotonic_ns();
    assert!(
        expiry(&h) <= TCP_SYN_TIMEOUT_NS,
        "connecting: short timeout"
    );
    assert_eq!(host_sends_tcp_flags(&mut h, &reply, 0x10), TCX_NEXT); // ACK
    assert!(
        expiry(&h) > TCP_TIMEOUT_NS - 60_000_000_000,
        "established: long timeout"
    );
}

#[test]
fn a_reused_port_pair_starts_afresh_after_the_old_connection_closed() {
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    let reply = tcp_reply(STRANGER, 33050);
    host_sends_what_answers(&mut h, &reply);
    host_sends_tcp_flags(&mut h, &reply, 0x11); // FIN|ACK
    assert_eq!(h.flows.flows().expect("read flows")[0].1.closing, 1);
    // A new connection from the same port to the same peer: SYN, then ACK.
    host_sends_what_answers(&mut h, &reply);
    host_sends_tcp_flags(&mut h, &reply, 0x10);
    let (_, state) = h.flows.flows().expect("read flows")[0];
    assert_eq!(state.closing, 0, "the new connection is not closing");
    assert!(state.expires_ns > monotonic_ns() + TCP_CLOSING_TIMEOUT_NS);
    expect(&mut h, reply, true, XDP_PASS, Reason::ReturnTraffic);
}

/// The egress program remembers, per CPU, flows it refreshed a moment ago and lets
/// their next segments skip the table; an abort or a new SYN must clear that
/// memory, or the new connection's first ACK would be skipped and leave it on the
/// SYN timeout. On one CPU throughout, as a connection's packets mostly are.
#[test]
fn a_connection_reopened_at_once_after_a_reset_gets_the_established_timeout() {
    let mut cpu = nix::sched::CpuSet::new();
    cpu.set(0).expect("CPU 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu).expect("pin to CPU 0");
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    let reply = tcp_reply(STRANGER, 33060);
    let expiry =
        |h: &Harness| h.flows.flows().expect("read flows")[0].1.expires_ns - monotonic_ns();
    host_sends_what_answers(&mut h, &reply); // SYN
    host_sends_tcp_flags(&mut h, &reply, 0x10); // ACK: established, remembered
    host_sends_tcp_flags(&mut h, &reply, 0x18); // data: skips the table
    assert!(expiry(&h) > TCP_TIMEOUT_NS - 60_000_000_000);
    host_sends_tcp_flags(&mut h, &reply, 0x14); // RST|ACK
    assert!(
        h.flows.flows().expect("read flows").is_empty(),
        "reset ends it"
    );
    expect(&mut h, reply.clone(), false, XDP_DROP, Reason::DefaultDrop);
    // Reopened within the same quarter second: SYN, then its first ACK.
    host_sends_what_answers(&mut h, &reply);
    assert!(
        expiry(&h) <= TCP_SYN_TIMEOUT_NS,
        "connecting: short timeout"
    );
    host_sends_tcp_flags(&mut h, &reply, 0x10);
    assert!(
        expiry(&h) > TCP_TIMEOUT_NS - 60_000_000_000,
        "established again: long timeout"
    );
    // A FIN right after: the flow winds down, and the ACKs after it keep it so.
    host_sends_tcp_flags(&mut h, &reply, 0x11);
    host_sends_tcp_flags(&mut h, &reply, 0x10);
    let (_, state) = h.flows.flows().expect("read flows")[0];
    assert_eq!(state.closing, 1);
    assert!(state.expires_ns <= monotonic_ns() + TCP_CLOSING_TIMEOUT_NS);
    expect(&mut h, reply, true, XDP_PASS, Reason::ReturnTraffic);
}

/// The XDP program remembers, per CPU, replies it found a live flow for and lets
/// the next ones skip the table; the host's abort, and user space's writes, must
/// end that at once. On one CPU throughout, where the memory is.
#[test]
fn a_remembered_reply_stops_passing_the_moment_its_flow_ends() {
    let mut cpu = nix::sched::CpuSet::new();
    cpu.set(0).expect("CPU 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu).expect("pin to CPU 0");
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    for peer in [STRANGER, STRANGER_V6] {
        let reply = tcp_reply(peer, 33080);
        host_sends_what_answers(&mut h, &reply); // SYN
        for _ in 0..3 {
            expect(&mut h, reply.clone(), true, XDP_PASS, Reason::ReturnTraffic);
        }
        assert_eq!(host_sends_tcp_flags(&mut h, &reply, 0x04), TCX_NEXT); // RST
        expect(&mut h, reply.clone(), false, XDP_DROP, Reason::DefaultDrop);

        let datagram = FrameSpec::udp(peer, 33081);
        host_sends_what_answers(&mut h, &datagram);
        for _ in 0..3 {
            expect(
                &mut h,
                datagram.clone(),
                true,
                XDP_PASS,
                Reason::ReturnTraffic,
            );
        }
        // User space shortens the entry (here: to a second ago).
        h.expired_flow(&answered(&datagram));
        expect(&mut h, datagram, false, XDP_DROP, Reason::DefaultDrop);
    }
}

#[test]
fn an_expired_flow_lets_nothing_in() {
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    let reply = FrameSpec::udp(STRANGER, 33020);
    h.open_flow(&answered(&reply));
    expect(&mut h, reply.clone(), true, XDP_PASS, Reason::ReturnTraffic);
    h.expired_flow(&answered(&reply));
    expect(&mut h, reply, false, XDP_DROP, Reason::DefaultDrop);
}

fn answered(spec: &FrameSpec) -> Flow {
    airlock_integration::kernel::answered_flow(&spec.build().class).expect("can answer a flow")
}

#[test]
fn a_flood_of_fake_replies_is_dropped_and_adds_nothing_to_the_table() {
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    let genuine = FrameSpec::udp(STRANGER, 40_000);
    host_sends_what_answers(&mut h, &genuine);
    let before = h.flows.flows().expect("read flows").len();
    let mut passed = 0;
    for i in 0..2_000u32 {
        let port = 1024 + (i * 7919 % 60_000) as u16;
        if port == 40_000 {
            continue;
        }
        let peer = format!("203.0.113.{}", 1 + i % 250);
        for spec in [FrameSpec::udp(&peer, port), tcp_reply(&peer, port)] {
            if h.run(&spec.build().bytes).action == XDP_PASS {
                passed += 1;
            }
        }
    }
    assert_eq!(passed, 0, "fake replies got through");
    assert_eq!(h.flows.flows().expect("read flows").len(), before);
    expect(&mut h, genuine, true, XDP_PASS, Reason::ReturnTraffic);
}

#[test]
fn a_full_table_still_records_new_flows_by_evicting_old_ones() {
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    let far = monotonic_ns() + 3_600_000_000_000;
    let filler = |i: u32| Flow {
        peer: IpAddr::from(std::net::Ipv6Addr::new(
            0x2001, 0xdb8, 0xf10, 0, 0, 0, 0, i as u16,
        )),
        protocol: 17,
        local_port: 50_000 + (i >> 16) as u16,
        peer_port: 53,
    };
    for i in 0..FLOW_TABLE_ENTRIES {
        h.flows
            .insert_open(&filler(i), far)
            .expect("fill flow table");
    }
    let reply = tcp_reply(STRANGER, 33030);
    host_sends_what_answers(&mut h, &reply);
    expect(&mut h, reply, true, XDP_PASS, Reason::ReturnTraffic);
    // The new flow went in by evicting fillers, not by growing the table.
    let flows = h.flows.flows().expect("read flows");
    let fillers = flows.iter().filter(|(f, _)| f.peer_port == 53).count();
    assert!(
        fillers < FLOW_TABLE_ENTRIES as usize && flows.len() <= FLOW_TABLE_ENTRIES as usize,
        "{fillers} fillers, {} entries",
        flows.len()
    );
}

// ---------------------------------------------------------------------------
// Real traffic between two namespaces.
// ---------------------------------------------------------------------------

const PEER_TCP_PORT: u16 = 7000;
const PEER_UDP_PORT: u16 = 7053;
/// A port on the host that no rule covers, with listeners behind it.
const HOST_OPEN_PORT: u16 = 7100;
/// For the host's own connections: generous, because the first IPv6 exchange on a
/// fresh link can wait on neighbour discovery. A reply the filter drops is dropped
/// on every retransmission too, so waiting longer cannot hide a wrong verdict.
const HOST_SIDE: Duration = Duration::from_secs(3);

/// A UDP echo responder on the client side (the remote peer), on every address.
fn udp_echo(ns: &Namespace, port: u16) -> Background {
    let mut threads = Background::default();
    for ip in ["0.0.0.0", "::"] {
        let bind = SocketAddr::new(ip.parse().unwrap(), port);
        threads.spawn(ns, move |ready, stop| {
            let socket = reusable_udp(bind);
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            ready();
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
    }
    threads
}

/// A UDP socket others may bind too (the fake-reply flood sends from the echo
/// responder's own address and port).
fn reusable_udp(bind: SocketAddr) -> UdpSocket {
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, None).unwrap();
    if bind.is_ipv6() {
        socket.set_only_v6(true).unwrap();
    }
    socket.set_reuse_address(true).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket.bind(&bind.into()).unwrap();
    socket.into()
}

/// From the server (the filtered host): TCP connect to the peer and read its
/// greeting byte.
fn host_connects_out(bed: &Testbed, peer: &str, port: u16) -> std::io::Result<()> {
    bed.connects_out(peer, port, HOST_SIDE)
}

/// From the server: a UDP query to the peer; returns the local port used and the
/// answer, if one came back.
fn host_queries(bed: &Testbed, peer: &str, port: u16) -> (u16, Option<Vec<u8>>) {
    let peer: IpAddr = peer.parse().unwrap();
    let local = Testbed::server_addr_for(peer);
    bed.server
        .spawn(move || {
            let socket = UdpSocket::bind(SocketAddr::new(local, 0)).unwrap();
            socket.set_read_timeout(Some(HOST_SIDE)).unwrap();
            socket
                .send_to(b"query", SocketAddr::new(peer, port))
                .unwrap();
            let mut buf = [0u8; 64];
            let answer = socket
                .recv_from(&mut buf)
                .ok()
                .map(|(n, _)| buf[..n].to_vec());
            (socket.local_addr().unwrap().port(), answer)
        })
        .join()
        .unwrap()
}

/// Counts UDP datagrams arriving on the server's `port` until dropped.
struct UdpSink {
    received: Arc<AtomicUsize>,
    _thread: Background,
}

impl UdpSink {
    fn start(ns: &Namespace, port: u16) -> Self {
        let received = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&received);
        let mut thread = Background::default();
        thread.spawn(ns, move |ready, stop| {
            let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            ready();
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if socket.recv_from(&mut buf).is_ok() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self {
            received,
            _thread: thread,
        }
    }
}

fn reason_packets(status: &serde_json::Value, reason: Reason) -> u64 {
    status["interfaces"][0]["reasons"][reason.name()]["packets"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn under_default_drop_the_host_gets_its_replies_and_strangers_stay_out() {
    let f = Fixture::new("rt");
    let text = policy("drop", "enforce").replace("eth0", &f.bed.server_if);
    let policy = f.write("p.yaml", &text);
    let _peer_tcp = Server::start(&f.bed.client, PEER_TCP_PORT);
    let _peer_udp = udp_echo(&f.bed.client, PEER_UDP_PORT);
    let _host_tcp = Server::start(&f.bed.server, HOST_OPEN_PORT);
    let host_udp = UdpSink::start(&f.bed.server, HOST_OPEN_PORT);
    // Positive control: without the filter the stranger's datagrams do arrive.
    f.bed.send_udp(addr::STRANGER_V4, HOST_OPEN_PORT, 3);
    assert!(
        wait_until(Duration::from_secs(2), || host_udp
            .received
            .load(Ordering::Relaxed)
            == 3),
        "the UDP sink works"
    );
    f.apply(&policy);
    let status = f.status_json();
    assert_eq!(
        status["interfaces"][0]["return_traffic"]["egress"], "attached",
        "{status}"
    );

    // The host opens connections to a peer in no allowed set, and gets its replies.
    for peer in [STRANGER, STRANGER_V6] {
        host_connects_out(&f.bed, peer, PEER_TCP_PORT)
            .unwrap_or_else(|e| panic!("TCP to {peer} from the filtered host: {e}"));
        let (_, answer) = host_queries(&f.bed, peer, PEER_UDP_PORT);
        assert_eq!(
            answer.as_deref(),
            Some(&b"query"[..]),
            "UDP answer from {peer}"
        );
        // A closed port answers with a RST, which is a reply too: refused at once,
        // not a timeout.
        let closed =
            host_connects_out(&f.bed, peer, PEER_TCP_PORT + 1).expect_err("nothing listens there");
        assert_eq!(
            closed.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "the peer's RST reached the host ({peer}): {closed}"
        );
    }
    let status = f.status_json();
    assert!(
        reason_packets(&status, Reason::ReturnTraffic) >= 8,
        "{status}"
    );
    assert!(
        status["interfaces"][0]["return_traffic"]["flows_live"]
            .as_u64()
            .unwrap_or(0)
            >= 4,
        "{status}"
    );

    // The same peer's unsolicited SYNs and datagrams are dropped: by the filter
    // (counted), not refused by the host.
    let before = reason_packets(&f.status_json(), Reason::DefaultDrop);
    assert!(
        !f.bed.connects(addr::STRANGER_V4, HOST_OPEN_PORT, REFUSED),
        "unsolicited TCP from the stranger got in"
    );
    assert!(
        !f.bed.connects(addr::STRANGER_V6, HOST_OPEN_PORT, REFUSED),
        "unsolicited TCP (IPv6) from the stranger got in"
    );
    f.bed.send_udp(addr::STRANGER_V4, HOST_OPEN_PORT, 20);
    assert!(
        wait_until(Duration::from_secs(2), || {
            reason_packets(&f.status_json(), Reason::DefaultDrop) >= before + 2 + 20
        }),
        "two SYNs and 20 datagrams counted as default_drop"
    );
    assert_eq!(host_udp.received.load(Ordering::Relaxed), 3, "none arrived");
    // The office still reaches the database, as before.
    assert!(f.gets_in(addr::OFFICE_V4));
    assert!(f.kept_out(addr::STRANGER_V4));
}

#[test]
fn a_flood_of_fake_udp_replies_from_a_real_peer_gets_nothing_through() {
    let f = Fixture::new("rf");
    let text = policy("drop", "enforce").replace("eth0", &f.bed.server_if);
    let policy = f.write("p.yaml", &text);
    let _peer_udp = udp_echo(&f.bed.client, PEER_UDP_PORT);
    f.apply(&policy);
    // A genuine exchange first: the peer's address and port now have an open flow.
    let (query_port, answer) = host_queries(&f.bed, STRANGER, PEER_UDP_PORT);
    assert!(answer.is_some(), "the genuine answer must arrive");
    let before = f.status_json();
    let flows_before = before["interfaces"][0]["return_traffic"]["flows_present"].clone();

    // Then 2,000 "replies" from that same address and port to every other port.
    const FLOOD: u16 = 2_000;
    let target: IpAddr = Testbed::server_addr_for(STRANGER.parse().unwrap());
    f.bed
        .client
        .spawn(move || {
            let socket = reusable_udp(SocketAddr::new(STRANGER.parse().unwrap(), PEER_UDP_PORT));
            let mut sent = 0;
            let mut port = 20_000;
            while sent < FLOOD {
                port += 1;
                if port == query_port {
                    continue;
                }
                socket
                    .send_to(b"fake answer", SocketAddr::new(target, port))
                    .unwrap();
                sent += 1;
            }
        })
        .join()
        .unwrap();
    let dropped_before = reason_packets(&before, Reason::DefaultDrop);
    assert!(
        wait_until(Duration::from_secs(3), || {
            reason_packets(&f.status_json(), Reason::DefaultDrop)
                >= dropped_before + u64::from(FLOOD)
        }),
        "every fake reply was dropped by the filter"
    );
    let after = f.status_json();
    assert_eq!(
        reason_packets(&after, Reason::ReturnTraffic),
        reason_packets(&before, Reason::ReturnTraffic),
        "no fake reply passed as return traffic"
    );
    assert_eq!(
        after["interfaces"][0]["return_traffic"]["flows_present"], flows_before,
        "fake replies added nothing to the flow table"
    );
}

/// How many tcx egress programs the server's interface runs.
fn egress_programs(bed: &Testbed) -> usize {
    let iface = bed.server_if.clone();
    bed.server
        .spawn(move || {
            aya::programs::SchedClassifier::query_tcx(&iface, aya::programs::TcAttachType::Egress)
                .map_or(0, |(_, programs)| programs.len())
        })
        .join()
        .unwrap()
}

#[test]
fn detaching_the_egress_program_is_repaired_by_the_next_apply() {
    let f = Fixture::new("re");
    let text = policy("drop", "enforce").replace("eth0", &f.bed.server_if);
    let policy = f.write("p.yaml", &text);
    let _peer_tcp = Server::start(&f.bed.client, PEER_TCP_PORT);
    f.apply(&policy);
    let link = f
        .bed
        .bpffs
        .path()
        .join(&f.bed.server_if)
        .join(airlock::loader::EGRESS_LINK_PIN);
    std::fs::remove_file(&link).expect("unpin the egress link");
    // The kernel releases an unpinned link asynchronously: wait until it is gone.
    assert!(
        wait_until(Duration::from_secs(5), || egress_programs(&f.bed) == 0),
        "the egress program is still attached after unpinning its link"
    );
    let status = f.status_json();
    assert_eq!(
        status["interfaces"][0]["return_traffic"]["egress"],
        "detached"
    );
    let outcome = host_connects_out(&f.bed, STRANGER, PEER_TCP_PORT);
    // Judged by the error's kind, not the time taken: poll(2) may end the connect a
    // fraction of a millisecond short of its timeout.
    assert!(
        outcome
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut),
        "without the egress program the replies are dropped (a timeout, not a refusal): {outcome:?}"
    );
    f.apply(&policy);
    let status = f.status_json();
    assert_eq!(
        status["interfaces"][0]["return_traffic"]["egress"],
        "attached"
    );
    host_connects_out(&f.bed, STRANGER, PEER_TCP_PORT).expect("replies pass again");
    assert_eq!(egress_programs(&f.bed), 1, "exactly one egress program");
}

/// A TCP echo service that keeps each connection open; stops when dropped.
fn tcp_echo(ns: &Namespace, port: u16) -> Background {
    let mut thread = Background::default();
    thread.spawn(ns, move |ready, stop| {
        let listener = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        ready();
        let mut connections = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok((stream, _)) = listener.accept() {
                stream.set_nonblocking(true).unwrap();
                connections.push(stream);
            }
            for stream in &mut connections {
                use std::io::{Read as _, Write as _};
                let mut buf = [0u8; 64];
                if let Ok(n @ 1..) = stream.read(&mut buf) {
                    let _ = stream.write_all(&buf[..n]);
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
    });
    thread
}

/// Sends `message` on `stream` and waits up to `timeout` for its echo.
fn round_trip(stream: &mut std::net::TcpStream, message: &[u8], timeout: Duration) -> bool {
    use std::io::{Read as _, Write as _};
    stream.set_read_timeout(Some(timeout)).unwrap();
    if stream.write_all(message).is_err() {
        return false;
    }
    let mut buf = vec![0u8; message.len()];
    stream.read_exact(&mut buf).is_ok() && buf == message
}

/// A TCP connection made from inside `ns` (from `source`, to `target:port`).
fn connect_from(ns: &Namespace, source: IpAddr, target: IpAddr, port: u16) -> std::net::TcpStream {
    ns.spawn(move || {
        let socket = Socket::new(
            Domain::for_address(SocketAddr::new(target, 0)),
            Type::STREAM,
            None,
        )
        .unwrap();
        socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
        socket
            .connect_timeout(&SocketAddr::new(target, port).into(), HOST_SIDE)
            .unwrap();
        socket.into()
    })
    .join()
    .unwrap()
}

#[test]
fn a_connection_the_host_opened_before_the_filter_keeps_its_replies() {
    let f = Fixture::new("rs");
    let _peer = tcp_echo(&f.bed.client, PEER_TCP_PORT);
    let peer: IpAddr = STRANGER.parse().unwrap();
    // Opened before Airlock was there: the egress program never saw its SYN.
    let mut stream = connect_from(
        &f.bed.server,
        Testbed::server_addr_for(peer),
        peer,
        PEER_TCP_PORT,
    );
    assert!(round_trip(&mut stream, b"before", HOST_SIDE));
    let text = policy("drop", "enforce").replace("eth0", &f.bed.server_if);
    f.apply(&f.write("p.yaml", &text));
    // The install learnt it from the socket table.
    assert!(
        round_trip(&mut stream, b"after", HOST_SIDE),
        "the host's own earlier connection lost its replies"
    );
    assert!(reason_packets(&f.status_json(), Reason::ReturnTraffic) >= 1);
}

#[test]
fn a_connection_a_peer_opened_is_cut_when_default_drop_comes_in() {
    let f = Fixture::new("rp");
    let _service = tcp_echo(&f.bed.server, HOST_OPEN_PORT);
    let write = |default: &str| {
        let text = policy(default, "enforce").replace("eth0", &f.bed.server_if);
        f.write("p.yaml", &text)
    };
    // Under default: pass the stranger may use the port no rule covers...
    f.apply(&write("pass"));
    let server: IpAddr = Testbed::server_addr_for(STRANGER.parse().unwrap());
    let mut stream = connect_from(
        &f.bed.client,
        STRANGER.parse().unwrap(),
        server,
        HOST_OPEN_PORT,
    );
    assert!(round_trip(&mut stream, b"open", HOST_SIDE));
    // ...and once default: drop is in force, the host's answers on that
    // connection do not make the stranger's packets "return traffic".
    f.apply(&write("drop"));
    assert!(
        !round_trip(&mut stream, b"still?", Duration::from_millis(1500)),
        "a connection the peer opened went on as return traffic"
    );
    assert_eq!(reason_packets(&f.status_json(), Reason::ReturnTraffic), 0);
}

/// The host's packet to `peer`: `spec` built from the host, so the egress program
/// sees `peer` as the destination and `SOURCE_PORT` as the host's port.
fn host_to(peer: IpAddr, spec: FrameSpec) -> FrameSpec {
    let mut spec = spec;
    match (&mut spec.l3, peer) {
        (airlock_integration::packet::L3::V4(v4), IpAddr::V4(peer)) => v4.dst = peer,
        (airlock_integration::packet::L3::V6(v6), IpAddr::V6(peer)) => v6.dst = peer,
        _ => panic!("{peer} does not fit {spec:?}"),
    }
    spec
}

/// Every kind of frame the host sends records its flow by the right peer, ports
/// and protocol, whichever parse takes it: the straight-through one in fast.rs
/// (IPv4 without options or IPv6 without extension headers, with TCP or UDP,
/// untagged or behind tags, also when the IP length claims more than the frame
/// holds, as a segment with its payload in pages does) or the general one (IPv4
/// options, IPv6 extension headers). A frame the general parse
/// finds malformed (IPv4 total length 0, short of BIG TCP's 64 KiB) records
/// nothing. Each frame is checked on its own: exactly its flow is added; every
/// frame that is wrong is reported.
#[test]
fn every_frame_kind_the_host_sends_records_its_own_flow() {
    let mut h = Harness::new();
    h.apply(&policy("drop", "enforce"));
    let v4: IpAddr = STRANGER.parse().unwrap();
    let v6: IpAddr = STRANGER_V6.parse().unwrap();
    let syn = |port| Transport::tcp_syn(port);
    let udp = |port| Transport::Udp { dst_port: port };
    use airlock_integration::packet::{Ext, Tag};
    // What it is, the frame, and the flow it opens: (peer, protocol, peer port).
    type Case = (&'static str, FrameSpec, Option<(IpAddr, u8, u16)>);
    let cases: Vec<Case> = vec![
        (
            "IPv4 TCP",
            FrameSpec::ip(v4, syn(51001)),
            Some((v4, 6, 51001)),
        ),
        (
            "IPv4 UDP",
            FrameSpec::ip(v4, udp(51002)),
            Some((v4, 17, 51002)),
        ),
        (
            "IPv6 TCP",
            FrameSpec::ip(v6, syn(51003)),
            Some((v6, 6, 51003)),
        ),
        (
            "IPv6 UDP",
            FrameSpec::ip(v6, udp(51004)),
            Some((v6, 17, 51004)),
        ),
        (
            "IPv4 TCP, IP length past the frame",
            FrameSpec::ip(v4, syn(51005)).total_len(1500),
            Some((v4, 6, 51005)),
        ),
        (
            "IPv6 UDP, IP length past the frame",
            FrameSpec::ip(v6, udp(51006)).payload_len(1480),
            Some((v6, 17, 51006)),
        ),
        (
            "IPv4 TCP with options",
            FrameSpec::ip(v4, syn(51007)).options(2),
            Some((v4, 6, 51007)),
        ),
        (
            "IPv4 UDP behind an 802.1Q tag",
            FrameSpec::ip(v4, udp(51008)).tag(Tag::Dot1Q),
            Some((v4, 17, 51008)),
        ),
        (
            "IPv6 TCP behind two tags",
            FrameSpec::ip(v6, syn(51009))
                .tag(Tag::Dot1Ad)
                .tag(Tag::Dot1Q),
            Some((v6, 6, 51009)),
        ),
        (
            "IPv6 UDP after a hop-by-hop header",
            FrameSpec::ip(v6, udp(51010)).ext(Ext::HopByHop { len: 0 }),
            Some((v6, 17, 51010)),
        ),
        (
            "IPv4 TCP, total length 0",
            FrameSpec::ip(v4, syn(51011)).total_len(0),
            None,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, spec, opens) in cases {
        let spec = match opens {
            Some((peer, _, _)) => host_to(peer, spec),
            None => host_to(v4, spec),
        };
        let before = h.flows.flows().expect("read flows");
        assert_eq!(h.run_egress(&spec.build().bytes), TCX_NEXT, "{what}");
        let added: Vec<Flow> = h
            .flows
            .flows()
            .expect("read flows")
            .into_iter()
            .map(|(flow, _)| flow)
            .filter(|flow| !before.iter().any(|(old, _)| old == flow))
            .collect();
        let expected: Vec<Flow> = opens
            .into_iter()
            .map(|(peer, protocol, peer_port)| Flow {
                peer,
                protocol,
                local_port: SOURCE_PORT,
                peer_port,
            })
            .collect();
        if added != expected {
            wrong.push(format!("{what}: recorded {added:?}, expected {expected:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
