//! The peers, loaded on the same packets and policies as Airlock:
//!
//! - xdp-filter (Debian xdp-tools): its deny-mode IP object, which passes listed
//!   addresses and drops the rest, attached directly with aya because libxdp's
//!   dispatcher fails here. It matches exact addresses only, in a per-CPU hash:
//!   each prefix of the policy goes in as its network address, so it enforces a
//!   looser policy than Airlock's (no prefixes, no ports) at that cost.
//! - nftables: a netdev ingress chain with an interval set per family.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuHashMap, PerCpuValues},
    programs::Xdp,
};
use ipnet::IpNet;

use super::policies::{AIRBYTE_V4, PORT, Workload};
use crate::netns::Namespace;

/// xdp-filter's allowlist program ("deny" mode, IP features only: the smallest
/// object that can express an address allowlist).
pub const XDP_FILTER_OBJECT: &str = "xdpfilt_dny_ip.o";
const XDP_FILTER_PROGRAM: &str = "xdpfilt_dny_ip";
/// `MAP_FLAG_SRC` in xdp-filter's `common_kern_user.h`.
const MAP_FLAG_SRC: u64 = 1;

/// Where libxdp installs its BPF objects on Debian (multiarch) and elsewhere.
pub fn find_xdp_filter_object() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = vec!["/usr/lib/bpf".into(), "/usr/local/lib/bpf".into()];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for entry in entries.flatten() {
            dirs.push(entry.path().join("bpf"));
        }
    }
    dirs.into_iter()
        .map(|d| d.join(XDP_FILTER_OBJECT))
        .find(|p| p.is_file())
}

/// xdp-filter's program with its maps filled from a workload.
pub struct XdpFilter {
    ebpf: Ebpf,
    /// Addresses loaded, per family.
    pub v4: usize,
    pub v6: usize,
    /// Prefixes of the policy it cannot express exactly (shorter than /32, /128).
    pub inexact: usize,
    pub load_time: Duration,
}

impl XdpFilter {
    /// Loads the object with its address maps sized for `workload` (its own limit
    /// is 10,000 per family), pinning its maps under `pin_dir` (a bpffs directory:
    /// the object asks for pinning by name).
    pub fn load(object: &Path, workload: &Workload, pin_dir: &Path) -> Result<Self> {
        let started = Instant::now();
        let mut v4: Vec<[u8; 4]> = vec![AIRBYTE_V4.octets(), workload.allowed_v4.octets()];
        let mut v6: Vec<[u8; 16]> = workload.allowed_v6.iter().map(|a| a.octets()).collect();
        let mut inexact = 0;
        for net in &workload.bulk {
            match net {
                IpNet::V4(n) => {
                    inexact += usize::from(n.prefix_len() < 32);
                    v4.push(n.network().octets());
                }
                IpNet::V6(n) => {
                    inexact += usize::from(n.prefix_len() < 128);
                    v6.push(n.network().octets());
                }
            }
        }
        v4.sort_unstable();
        v4.dedup();
        v6.sort_unstable();
        v6.dedup();
        std::fs::create_dir_all(pin_dir)?;
        let max4 = (v4.len() as u32).max(16);
        let max6 = (v6.len() as u32).max(16);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries("filter_ipv4", max4)
            .map_max_entries("filter_ipv6", max6)
            .load_file(object)
            .with_context(|| format!("loading {}", object.display()))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        {
            let mut map: PerCpuHashMap<_, [u8; 4], u64> = ebpf
                .map_mut("filter_ipv4")
                .context("no filter_ipv4 map")?
                .try_into()?;
            for addr in &v4 {
                let values = PerCpuValues::try_from(vec![MAP_FLAG_SRC; cpus])?;
                map.insert(addr, values, 0)?;
            }
        }
        {
            let mut map: PerCpuHashMap<_, [u8; 16], u64> = ebpf
                .map_mut("filter_ipv6")
                .context("no filter_ipv6 map")?
                .try_into()?;
            for addr in &v6 {
                let values = PerCpuValues::try_from(vec![MAP_FLAG_SRC; cpus])?;
                map.insert(addr, values, 0)?;
            }
        }
        let mut filter = Self {
            ebpf,
            v4: v4.len(),
            v6: v6.len(),
            inexact,
            load_time: Duration::ZERO,
        };
        filter.program()?.load()?;
        filter.load_time = started.elapsed();
        Ok(filter)
    }

    pub fn program(&mut self) -> Result<&mut Xdp> {
        let program = self
            .ebpf
            .program_mut(XDP_FILTER_PROGRAM)
            .with_context(|| format!("no program {XDP_FILTER_PROGRAM} in xdp-filter's object"))?;
        Ok(program.try_into()?)
    }
}

/// An nftables netdev ingress chain on `iface` in `ns` enforcing the workload's
/// policy on its port: TCP to `PORT` passes only from the interval sets.
pub struct Nftables {
    /// The namespace's name (the table is deleted from it on drop).
    ns: String,
    pub load_time: Duration,
    pub elements: usize,
}

const NFT_TABLE: &str = "airlock_bench";

impl Nftables {
    /// Loads the ruleset with `nft -f -`; gives up (and says so) after `limit`.
    pub fn load(ns: &Namespace, iface: &str, workload: &Workload, limit: Duration) -> Result<Self> {
        let mut v4 = vec![IpNet::from(IpAddr::from(AIRBYTE_V4))];
        let mut v6 = Vec::new();
        for net in &workload.bulk {
            match net {
                IpNet::V4(_) => v4.push(*net),
                IpNet::V6(_) => v6.push(*net),
            }
        }
        let mut text = String::with_capacity((v4.len() + v6.len()) * 24 + 512);
        let _ = writeln!(text, "table netdev {NFT_TABLE} {{");
        for (name, kind, nets) in [("allow4", "ipv4_addr", &v4), ("allow6", "ipv6_addr", &v6)] {
            let _ = writeln!(
                text,
                "  set {name} {{\n    type {kind}; flags interval; auto-merge;"
            );
            if !nets.is_empty() {
                text.push_str("    elements = { ");
                for (i, net) in nets.iter().enumerate() {
                    if i > 0 {
                        text.push_str(", ");
                    }
                    let _ = write!(text, "{net}");
                }
                text.push_str(" }\n");
            }
            text.push_str("  }\n");
        }
        let _ = writeln!(
            text,
            "  chain ingress {{\n    type filter hook ingress device \"{iface}\" priority 0; policy accept;\n    ip saddr != @allow4 tcp dport {PORT} drop\n    ip6 saddr != @allow6 tcp dport {PORT} drop\n  }}\n}}"
        );
        let started = Instant::now();
        let mut child = ns
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (is nftables installed?)")?;
        let mut stdin = child.stdin.take().context("nft stdin")?;
        let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        loop {
            if let Some(status) = child.try_wait()? {
                let _ = writer.join();
                if !status.success() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read as _;
                        let _ = e.read_to_string(&mut err);
                    }
                    bail!(
                        "nft -f failed: {}",
                        err.lines().take(3).collect::<Vec<_>>().join(" / ")
                    );
                }
                break;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nft -f did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            ns: ns.name().to_owned(),
            load_time: started.elapsed(),
            elements: v4.len() + v6.len(),
        })
    }
}

impl Drop for Nftables {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "delete", "table", "netdev", NFT_TABLE,
            ])
            .status();
    }
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}
