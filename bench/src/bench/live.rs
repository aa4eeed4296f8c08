//! Live throughput on a veth pair between two namespaces. The receiver runs the
//! program under test in native (driver) mode; the generator is the kernel's own
//! XDP live-frames mode (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES) running
//! an `XDP_TX` program on the client's end, which sends every test frame out of the
//! veth. The receiver's NAPI runs in its own kernel thread (threaded NAPI) pinned
//! to the other CPU, so generator and receiver each have a core, and the rate the
//! receiver processes frames at (its `rx_packets`) is the figure. Beside it, the
//! receiver's CPU time per frame (that thread's run time), which does not count
//! the time the thread waited for its CPU.
//!
//! Kernels may refuse the live-frames mode (EPERM on some builds). [`LiveBed::new`]
//! tries it once up front; failing that, the live rows are left out, with the
//! reason in the report, while the rest of the suite carries on. On request it
//! sends through a raw packet socket instead ([`super::sender`]); not by default:
//! on a 2-CPU guest that sender reached 0.1-0.2 Mpps and the receiver spent about
//! 1 µs per frame turning skbs into XDP frames, against which the tens of
//! nanoseconds that tell the programs apart were within the noise.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};

use super::{
    Stats, cpu_number, in_namespace, online_cpus, per_packet::Floor, pin_to_cpu, progress,
    sender::PacketSocket,
};
use crate::netns::{Namespace, Testbed};

/// Frames per generator call (BPF_PROG_TEST_RUN's `repeat`) and per batch.
const GEN_REPEAT: u32 = 1 << 18;
const GEN_BATCH: u32 = 64;
/// Before each measured window: lets the NAPI thread start and caches fill.
const WARMUP: Duration = Duration::from_millis(200);

/// What sends the live test's frames.
pub enum Source {
    /// BPF_PROG_TEST_RUN's live-frames mode on an XDP_TX program.
    LiveFrames,
    /// A raw packet socket on the client's veth.
    PacketSocket(PacketSocket),
    /// Nothing works on this kernel: no live rows.
    Unavailable,
}

pub struct LiveBed {
    pub bed: Testbed,
    generator: Floor,
    pub source: Source,
    /// What the probe found, for the report (why a source was not used).
    pub source_notes: Vec<String>,
    client_ifindex: u32,
    pub server_mac: [u8; 6],
    pub threaded_napi: bool,
    /// The receiver's NAPI thread (threaded NAPI only).
    napi_pid: Option<i32>,
}

/// The receiver's counters (`ip -s link`): for veth, `rx_packets` counts frames
/// its XDP program saw; `rx_dropped` frames the generator could not enqueue.
#[derive(Clone, Copy, Debug, Default)]
struct RxStats {
    packets: u64,
    dropped: u64,
}

/// One measured window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    /// Frames per second the receiver processed.
    pub rx_pps: f64,
    /// Frames per second the generator sent.
    pub tx_pps: f64,
    /// Frames per second lost because the receiver's ring was full.
    pub overflow_pps: f64,
    /// Nanoseconds of the receiver's NAPI thread's CPU time per frame it
    /// processed (NaN without threaded NAPI).
    pub rx_cpu_ns: f64,
}

/// Several windows: min/median/max of each figure.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rate {
    pub rx_pps: Stats,
    pub tx_pps: Stats,
    pub overflow_pps: Stats,
    /// All zero when not measured.
    pub rx_cpu_ns: Stats,
}

impl Rate {
    /// Min/median/max of each figure over `windows`.
    pub fn of(windows: &[Window]) -> Self {
        let pick = |f: fn(&Window) -> f64| Stats::of(&windows.iter().map(f).collect::<Vec<_>>());
        Rate {
            rx_pps: pick(|w| w.rx_pps),
            tx_pps: pick(|w| w.tx_pps),
            overflow_pps: pick(|w| w.overflow_pps),
            rx_cpu_ns: pick(|w| w.rx_cpu_ns),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "rx_pps": self.rx_pps.json(),
            "tx_pps": self.tx_pps.json(),
            "overflow_pps": self.overflow_pps.json(),
            "rx_cpu_ns_per_frame": self.rx_cpu_ns.json(),
        })
    }
}

impl LiveBed {
    /// `packet_socket`: when the kernel's generator is refused, send through a raw
    /// packet socket rather than leave the live rows out.
    pub fn new(packet_socket: bool) -> Result<Self> {
        let bed = Testbed::new("bl");
        let client_if = client_interface(&bed.client)?;
        let client_ifindex =
            in_namespace(&bed.client, || airlock::loader::interface_index(&client_if))
                .context("client veth has no index")?;
        let server_mac = mac_of(&bed.server, &bed.server_if)?;
        let generator = Floor::load("xdp-tx")?;
        let mut live = Self {
            bed,
            generator,
            source: Source::Unavailable,
            source_notes: Vec::new(),
            client_ifindex,
            server_mac,
            threaded_napi: false,
            napi_pid: None,
        };
        live.probe(packet_socket);
        Ok(live)
    }

    /// Picks the traffic source: the kernel's live-frames generator, else (if
    /// asked) a packet socket, each checked to reach the receiver.
    fn probe(&mut self, packet_socket: bool) {
        // ARP: passes Airlock and every floor; any frame reaching the veth counts.
        let frame = self.addressed(&crate::packet::FrameSpec::arp().build().bytes);
        let window = Duration::from_millis(50);
        self.source = Source::LiveFrames;
        match self.reaches_receiver(&frame, window) {
            Ok(()) => return,
            Err(e) => {
                let refused = e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .and_then(std::io::Error::raw_os_error)
                        == Some(libc::EPERM)
                        || c.to_string().contains("Operation not permitted")
                });
                self.source_notes.push(if refused {
                    format!("This kernel refuses BPF_F_TEST_XDP_LIVE_FRAMES (EPERM: {e:#}): the kernel's own generator cannot send")
                } else {
                    format!("The kernel's live-frames generator (BPF_F_TEST_XDP_LIVE_FRAMES) failed: {e:#}")
                });
            }
        }
        if !packet_socket {
            self.source = Source::Unavailable;
            self.source_notes.push(
                "A raw packet socket in the client namespace can send instead (`airlock-bench --live-packet-socket`), but on this machine kind it sends too slowly, and costs the receiver too much per frame, to tell the programs apart: not run by default".into(),
            );
            return;
        }
        let ifindex = self.client_ifindex;
        self.source = match in_namespace(&self.bed.client, || PacketSocket::open(ifindex)) {
            Ok(socket) => Source::PacketSocket(socket),
            Err(e) => {
                self.source_notes
                    .push(format!("No packet socket either: {e:#}"));
                Source::Unavailable
            }
        };
        if matches!(self.source, Source::Unavailable) {
            return;
        }
        if let Err(e) = self.reaches_receiver(&frame, window) {
            self.source_notes.push(format!(
                "The packet socket's frames do not reach the receiver: {e:#}"
            ));
            self.source = Source::Unavailable;
        }
    }

    /// Sends `frame` for `window` to the receiver running `xdp-pass` (veth takes
    /// XDP frames only while its peer has a program); fails unless some arrived.
    fn reaches_receiver(&mut self, frame: &[u8], window: Duration) -> Result<()> {
        let mut pass = Floor::load("xdp-pass")?;
        let seen = self.measure(pass.program()?, frame, window)?;
        anyhow::ensure!(
            seen.rx_pps > 0.0,
            "{:.0} frames/s sent, none received",
            seen.tx_pps
        );
        Ok(())
    }

    /// Whether live rows can be measured.
    pub fn available(&self) -> bool {
        !matches!(self.source, Source::Unavailable)
    }

    /// The traffic source, as the report names it.
    pub fn source_name(&self) -> &'static str {
        match self.source {
            Source::LiveFrames => {
                "the kernel's XDP live-frames generator (BPF_F_TEST_XDP_LIVE_FRAMES, XDP_TX)"
            }
            Source::PacketSocket(_) => {
                "a raw packet socket (AF_PACKET, sendmmsg, qdisc bypass): the sender, not the receiver, sets the rate; compare the receiver's CPU time per frame"
            }
            Source::Unavailable => "none",
        }
    }

    /// Frame with the receiver's MAC as destination (so passed frames are for it).
    pub fn addressed(&self, frame: &[u8]) -> Vec<u8> {
        let mut frame = frame.to_vec();
        frame[..6].copy_from_slice(&self.server_mac);
        frame
    }

    /// Attaches `receiver` natively to the server's veth, sends `frame` for one
    /// `window`, detaches. Callers take turns between the programs they compare,
    /// window by window, so a drift of the machine (another guest, a CPU's clock)
    /// falls on all of them alike.
    pub fn measure(
        &mut self,
        receiver: &mut Xdp,
        frame: &[u8],
        window: Duration,
    ) -> Result<Window> {
        let iface = self.bed.server_if.clone();
        let link = in_namespace(&self.bed.server, || {
            receiver.attach(&iface, XdpMode::Driver)
        })
        .with_context(|| format!("attaching natively to {iface}"))?;
        let result = self.window(frame, window);
        receiver.detach(link)?;
        result
    }

    fn window(&mut self, frame: &[u8], window: Duration) -> Result<Window> {
        // Threaded NAPI: the receiver's poll loop becomes a kernel thread we can put
        // on its own CPU, instead of running in the generator's softirq. veth only
        // has a NAPI instance while an XDP program is attached, so this is set (and
        // the thread pinned) after every attach.
        self.threaded_napi = self
            .bed
            .server
            .command("sh")
            .args([
                "-c",
                &format!("echo 1 > /sys/class/net/{}/threaded", self.bed.server_if),
            ])
            .status()
            .is_ok_and(|s| s.success());
        self.pin_napi_thread();
        self.send(frame, WARMUP)?;
        let before = rx_stats(&self.bed.server, &self.bed.server_if)?;
        let cpu_before = self.napi_pid.and_then(run_time_ns);
        let started = Instant::now();
        let sent = self.send(frame, window)?;
        // The last batch may still be in the receiver's ring.
        std::thread::sleep(Duration::from_millis(20));
        let after = rx_stats(&self.bed.server, &self.bed.server_if)?;
        let cpu_after = self.napi_pid.and_then(run_time_ns);
        let secs = started.elapsed().as_secs_f64() - 0.020;
        let frames = after.packets - before.packets;
        let rx_cpu_ns = match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if frames > 0 => (a - b) as f64 / frames as f64,
            _ => f64::NAN,
        };
        Ok(Window {
            rx_pps: frames as f64 / secs,
            tx_pps: sent as f64 / secs,
            overflow_pps: (after.dropped - before.dropped) as f64 / secs,
            rx_cpu_ns,
        })
    }

    /// Sends `frame` out of the client veth for `duration`; returns frames sent.
    fn send(&mut self, frame: &[u8], duration: Duration) -> Result<u64> {
        match &self.source {
            Source::LiveFrames => self.send_live_frames(frame, duration),
            Source::PacketSocket(socket) => {
                // The socket belongs to the client's namespace already.
                std::thread::scope(|scope| {
                    scope
                        .spawn(|| {
                            pin_to_cpu(0);
                            socket.send_for(frame, duration)
                        })
                        .join()
                        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))
                })?
            }
            Source::Unavailable => anyhow::bail!("no live traffic source on this kernel"),
        }
    }

    fn send_live_frames(&mut self, frame: &[u8], duration: Duration) -> Result<u64> {
        let ifindex = self.client_ifindex;
        let program = self.generator.program()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The frame is "received" on the client veth, so XDP_TX
        // sends it back out of it, towards the server.
        let mut md = [0u8; 24];
        md[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let client = &self.bed.client;
        in_namespace(client, || {
            pin_to_cpu(0);
            let deadline = Instant::now() + duration;
            let mut sent = 0u64;
            // Bounded by the deadline; each call sends GEN_REPEAT frames.
            while Instant::now() < deadline {
                program.test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&md),
                    repeat: GEN_REPEAT,
                    attrs: TestRunAttrs::new().xdp_live_frames(GEN_BATCH),
                    ..Default::default()
                })?;
                sent += u64::from(GEN_REPEAT);
            }
            Ok(sent)
        })
    }

    /// Finds the receiver's NAPI thread (created anew on every attach) and puts it
    /// on the last allowed CPU, away from the generator on the first.
    fn pin_napi_thread(&mut self) {
        self.napi_pid = None;
        if !self.threaded_napi || online_cpus() < 2 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
        let wanted = format!("napi/{}", self.bed.server_if);
        let wanted = &wanted[..wanted.len().min(15)];
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu_number(online_cpus() - 1)).is_err() {
            return;
        }
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if !comm.trim_end().starts_with(wanted) {
                continue;
            }
            self.napi_pid = Some(pid);
            if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set) {
                progress(format!("could not pin NAPI thread {pid}: {e}"));
            }
        }
    }
}

fn client_interface(ns: &Namespace) -> Result<String> {
    let out = ns.command("ip").args(["-j", "link", "show"]).output()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
        .find(|n| *n != "lo")
        .map(str::to_owned)
        .context("client namespace has no veth")
}

fn mac_of(ns: &Namespace, iface: &str) -> Result<[u8; 6]> {
    let out = ns
        .command("ip")
        .args(["-j", "link", "show", "dev", iface])
        .output()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let text = links[0]["address"].as_str().context("no MAC address")?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// A thread's CPU time so far, in ns (the first field of its schedstat; on a guest
/// with steal accounting, time the hypervisor ran something else is not in it).
fn run_time_ns(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn rx_stats(ns: &Namespace, iface: &str) -> Result<RxStats> {
    let out = ns
        .command("ip")
        .args(["-s", "-j", "link", "show", "dev", iface])
        .output()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rx = &links[0]["stats64"]["rx"];
    Ok(RxStats {
        packets: rx["packets"].as_u64().context("no rx packets")?,
        dropped: rx["dropped"].as_u64().unwrap_or(0),
    })
}
