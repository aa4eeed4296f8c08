//! Length fields that disagree with the frame: the packet is what the IP header
//! says it is (IPv4 total length, IPv6 40 + payload length), because that is what
//! the kernel keeps. Bytes past it are trimmed before the stack looks at them, so a
//! header that only fits there must not decide a verdict; a frame shorter than it
//! is dropped by the kernel, and by the filter as malformed.
//!
//! Each case runs the real program (BPF_PROG_TEST_RUN) and compares it with the
//! reference model and with the plainly expected verdict. Needs root.

use airlock_common::Reason;
use airlock_integration::kernel::{Harness, XDP_DROP, XDP_PASS, action_name};
use airlock_integration::packet::{Ext, FrameSpec, Tag, Transport};

/// `default: pass`, as the Helm chart ships it, with one restricted port: the
/// setting under which a wrong port is an open door.
const RESTRICTED_5432: &str = r#"
version: 1
interfaces: [eth0]
default: pass
sets:
  office: [198.51.100.0/24, "2001:db8:100::/48"]
rules:
  - name: pg
    ports: [5432/tcp]
    from: [office]
"#;

const IPPROTO_DSTOPTS: u8 = 60;

fn verify(h: &mut Harness, spec: FrameSpec, action: u32, reason: Reason) {
    let frame = spec.build();
    let outcome = h.check(&frame);
    assert_eq!(
        (action_name(outcome.action), outcome.reason),
        (action_name(action), reason),
        "{:?} ({:?})",
        frame.spec,
        frame.class
    );
}

/// The attack as reported: an IPv6 first fragment whose extension chain runs past
/// the payload length, with a TCP header to an open port in the trailing bytes,
/// then a second fragment carrying the real header to the restricted port.
#[test]
fn ipv6_first_fragment_whose_chain_ends_past_the_payload_is_dropped() {
    let mut h = Harness::new();
    h.apply(RESTRICTED_5432);
    let first = || {
        FrameSpec::tcp("2001:4860::1", 80)
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
            // 16 bytes of destination options, of which the payload holds 8.
            .ext(Ext::DestOpts { len: 1 })
    };
    // Told truthfully, the frame is an ordinary first fragment to port 80.
    verify(&mut h, first(), XDP_PASS, Reason::DefaultPass);
    // Cut to the fragment header and half the options: what follows is trailing
    // bytes the kernel trims, so the ports it holds decide nothing.
    verify(
        &mut h,
        first().payload_len(8 + 8),
        XDP_DROP,
        Reason::Malformed,
    );
    // Every other length short of the full chain and header: malformed too.
    let full = first().true_ip_len() - 40;
    for payload in 0..full {
        verify(
            &mut h,
            first().payload_len(payload as u16),
            XDP_DROP,
            Reason::Malformed,
        );
    }
    // The second fragment carries the rest: non-first, so it passes under
    // `default: pass`, in either order. With the first one dropped the kernel
    // never reassembles the datagram.
    let second = FrameSpec::v6(
        "2001:4860::1".parse().unwrap(),
        Transport::Other {
            protocol: IPPROTO_DSTOPTS,
            payload: 8 + 20,
        },
    )
    .ext(Ext::Fragment {
        offset: 1,
        more: false,
    });
    verify(&mut h, second.clone(), XDP_PASS, Reason::FragmentPass);
    verify(&mut h, first().payload_len(16), XDP_DROP, Reason::Malformed);
    verify(&mut h, second, XDP_PASS, Reason::FragmentPass);
}

/// IPv4's version of it: the TCP header of a first fragment must end inside the
/// total length, whatever the frame holds after it.
#[test]
fn ipv4_first_fragment_whose_tcp_header_ends_past_the_total_length_is_dropped() {
    let mut h = Harness::new();
    h.apply(RESTRICTED_5432);
    let first = || FrameSpec::tcp("8.8.8.8", 80).fragment(0, true);
    verify(&mut h, first(), XDP_PASS, Reason::DefaultPass);
    for total in 20..40 {
        verify(
            &mut h,
            first().total_len(total),
            XDP_DROP,
            Reason::Malformed,
        );
    }
    // Unfragmented, the same.
    for total in 20..40 {
        verify(
            &mut h,
            FrameSpec::tcp("8.8.8.8", 80).total_len(total),
            XDP_DROP,
            Reason::Malformed,
        );
    }
    // A later fragment is judged without ports, in either order.
    let later = FrameSpec::udp("8.8.8.8", 5432).fragment(3, false);
    verify(&mut h, later.clone(), XDP_PASS, Reason::FragmentPass);
    verify(&mut h, first().total_len(32), XDP_DROP, Reason::Malformed);
    verify(&mut h, later, XDP_PASS, Reason::FragmentPass);
}

/// A length larger than the frame: the kernel drops the packet as truncated.
#[test]
fn a_length_field_longer_than_the_frame_is_malformed() {
    let mut h = Harness::new();
    h.apply(RESTRICTED_5432);
    let v4 = FrameSpec::tcp("198.51.100.1", 5432);
    let v4_len = v4.true_ip_len() as u16;
    verify(&mut h, v4.clone(), XDP_PASS, Reason::RuleAllowed);
    for extra in [1, 2, 100, 0xffff - v4_len] {
        verify(
            &mut h,
            v4.clone().total_len(v4_len + extra),
            XDP_DROP,
            Reason::Malformed,
        );
    }
    let v6 = FrameSpec::tcp("2001:db8:100::1", 5432);
    let v6_payload = (v6.true_ip_len() - 40) as u16;
    verify(&mut h, v6.clone(), XDP_PASS, Reason::RuleAllowed);
    for extra in [1, 2, 100, 0xffff - v6_payload] {
        verify(
            &mut h,
            v6.clone().payload_len(v6_payload + extra),
            XDP_DROP,
            Reason::Malformed,
        );
    }
}

/// Bytes after the packet (Ethernet padding on a short packet, or anything an
/// attacker appends) change nothing: the headers inside the length decide.
#[test]
fn trailing_bytes_after_the_packet_change_nothing() {
    let mut h = Harness::new();
    h.apply(RESTRICTED_5432);
    // A TCP header to an open port, as an attacker would append it.
    let fake_tcp = [
        0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
    ];
    for padding in [&[0u8; 6][..], &[0xff; 20], &fake_tcp] {
        verify(
            &mut h,
            FrameSpec::tcp("8.8.8.8", 5432).trailer(padding),
            XDP_DROP,
            Reason::RuleRefused,
        );
        verify(
            &mut h,
            FrameSpec::tcp("2001:4860::1", 5432).trailer(padding),
            XDP_DROP,
            Reason::RuleRefused,
        );
        verify(
            &mut h,
            FrameSpec::udp("198.51.100.9", 53).trailer(padding),
            XDP_PASS,
            Reason::DefaultPass,
        );
        // A packet that is only an IP header plus "no next header": the trailing
        // TCP header is not its transport.
        verify(
            &mut h,
            FrameSpec::v6(
                "2001:4860::1".parse().unwrap(),
                Transport::Other {
                    protocol: 59,
                    payload: 0,
                },
            )
            .trailer(padding),
            XDP_PASS,
            Reason::DefaultPass,
        );
    }
}

/// IPv6 payload length 0 outside a jumbogram: nothing follows the fixed header.
#[test]
fn ipv6_payload_length_zero_holds_no_transport_header() {
    let mut h = Harness::new();
    h.apply(RESTRICTED_5432);
    verify(
        &mut h,
        FrameSpec::tcp("2001:4860::1", 80).payload_len(0),
        XDP_DROP,
        Reason::Malformed,
    );
    verify(
        &mut h,
        FrameSpec::tcp("2001:4860::1", 80)
            .ext(Ext::HopByHop { len: 0 })
            .payload_len(0),
        XDP_DROP,
        Reason::Malformed,
    );
}

/// Every chain of the builder's extension headers, cut by the payload length at
/// every byte (the frame keeping the rest as trailing bytes): the kernel agrees
/// with the model at each length, and any length short of the full chain and
/// transport header (TCP 20 bytes, UDP and ICMPv6 8) is malformed.
#[test]
fn chains_cut_by_the_payload_length_at_every_byte() {
    let mut h = Harness::new();
    h.apply(RESTRICTED_5432);
    let chains: [&[Ext]; 4] = [
        &[Ext::HopByHop { len: 0 }],
        &[
            Ext::HopByHop { len: 1 },
            Ext::Routing { len: 0 },
            Ext::Fragment {
                offset: 0,
                more: true,
            },
        ],
        &[Ext::Ah { len: 4 }, Ext::DestOpts { len: 2 }],
        &[
            Ext::Fragment {
                offset: 0,
                more: false,
            },
            Ext::DestOpts { len: 0 },
        ],
    ];
    let mut checked = 0;
    for chain in chains {
        let chain_len: usize = chain.iter().map(|ext| ext.byte_len()).sum();
        for (transport, header) in [
            (Transport::tcp_syn(80), 20),
            (Transport::Udp { dst_port: 80 }, 8),
            (Transport::Icmpv6 { icmp_type: 128 }, 8),
        ] {
            let mut spec = FrameSpec::v6("2001:4860::1".parse().unwrap(), transport);
            for ext in chain {
                spec = spec.ext(*ext);
            }
            let full = spec.true_ip_len() - 40;
            for payload in 0..=full {
                let frame = spec.clone().payload_len(payload as u16).build();
                let outcome = h.check(&frame);
                if payload < chain_len + header {
                    assert_eq!(
                        outcome.reason,
                        Reason::Malformed,
                        "payload length {payload} of {full}: {:?}",
                        frame.spec
                    );
                }
                checked += 1;
            }
        }
    }
    println!("{checked} cut chains checked");
}

/// The edges of the straight-through parse of the common frames (fast.rs: IPv4
/// without options, IPv6 without extension headers, TCP or UDP; untagged, one tag,
/// two tags): every length field from the frame's own down to the bare IP header,
/// and the frame cut short by up to 8 bytes, each judged by the kernel as by the
/// reference model (`check`), and plainly: sound while the length covers the
/// transport header, malformed below that or when the frame is shorter.
#[test]
fn the_common_frames_agree_at_every_length() {
    let mut h = Harness::new();
    h.apply(RESTRICTED_5432);
    let tag_sets: [&[Tag]; 3] = [&[], &[Tag::Dot1Q], &[Tag::Dot1Ad, Tag::Dot1Q]];
    // (frame, IPv6, transport header length, verdict of the sound frame)
    let frames = [
        ("198.51.100.1", true, 20, Reason::RuleAllowed),
        ("198.51.100.1", false, 8, Reason::DefaultPass),
        ("2001:db8:100::1", true, 20, Reason::RuleAllowed),
        ("2001:db8:100::1", false, 8, Reason::DefaultPass),
    ];
    for tags in tag_sets {
        for (source, tcp, transport_len, sound_reason) in frames {
            let spec = if tcp {
                FrameSpec::tcp(source, 5432)
            } else {
                FrameSpec::udp(source, 5432)
            };
            let spec = tags.iter().fold(spec, |spec, tag| spec.tag(*tag));
            let ipv6 = source.contains(':');
            let header_len = if ipv6 { 40 } else { 20 };
            let ip_len = spec.true_ip_len();
            for len in header_len..=ip_len {
                let cut = if ipv6 {
                    spec.clone().payload_len((len - header_len) as u16)
                } else {
                    spec.clone().total_len(len as u16)
                };
                let outcome = h.check(&cut.build());
                let expected = if len >= header_len + transport_len {
                    sound_reason
                } else {
                    Reason::Malformed
                };
                assert_eq!(outcome.reason, expected, "{tags:?} {source} length {len}");
            }
            for short in 1..=8 {
                let cut = spec.clone().truncate(spec.full_len() - short);
                let outcome = h.check(&cut.build());
                assert_eq!(
                    (action_name(outcome.action), outcome.reason),
                    (action_name(XDP_DROP), Reason::Malformed),
                    "{tags:?} {source} cut by {short}"
                );
            }
        }
    }
}
