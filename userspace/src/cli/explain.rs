//! `airlock explain`: the reference model's verdict for one packet, and what decided it.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use airlock::{
    policy,
    reference::{self, L4, PacketClass},
};
use serde_json::json;

use super::{OutputFormat, PinRootArg, UsageError, explain_live, output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Policy file.
    #[arg(short = 'f', long = "file")]
    policy: PathBuf,
    /// Source address of the packet.
    #[arg(long)]
    src: IpAddr,
    /// Destination port and protocol, e.g. 5432/tcp or 53/udp; a bare port is TCP,
    /// as in the policy language.
    #[arg(long, conflicts_with_all = ["icmp_type", "fragment"])]
    port: Option<String>,
    /// An ICMP (IPv4 source) or ICMPv6 (IPv6 source) message of this type instead.
    #[arg(long, conflicts_with = "fragment")]
    icmp_type: Option<u8>,
    /// A non-first fragment (it carries no ports).
    #[arg(long)]
    fragment: bool,
    #[arg(short, long, value_enum, default_value_t)]
    pub(super) output: OutputFormat,
    /// Also run the packet through the attached kernel program (BPF_PROG_TEST_RUN)
    /// and compare; exit 1 if they disagree.
    #[arg(long)]
    live: bool,
    /// With --live: the interface whose filter to run (default: the only one pinned).
    #[arg(long, requires = "live")]
    iface: Option<String>,
    #[command(flatten)]
    pin_root: PinRootArg,
}

fn parse_port(spec: &str) -> Result<L4, UsageError> {
    let bad = || {
        UsageError(format!(
            "--port {spec:?}: expected PORT, PORT/tcp or PORT/udp, e.g. 5432/tcp"
        ))
    };
    let (port, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let dst_port: u16 = port.parse().map_err(|_| bad())?;
    match proto {
        "tcp" => Ok(L4::tcp_syn(dst_port)),
        "udp" => Ok(L4::Udp { dst_port }),
        _ => Err(bad()),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = airlock::loader::PinRoot::new(&args.pin_root.pin_root);
    if args.live {
        super::preflight::kernel_access("explain --live", &root)?;
    }
    let policy = policy::load(&args.policy)?;
    let l4 = match (&args.port, args.icmp_type, args.fragment) {
        (Some(spec), _, _) => parse_port(spec)?,
        (None, Some(icmp_type), _) if args.src.is_ipv4() => L4::Icmp { icmp_type },
        (None, Some(icmp_type), _) => L4::Icmpv6 { icmp_type },
        (None, None, true) => L4::NonFirstFragment,
        (None, None, false) => {
            return Err(UsageError(
                "say what packet: --port PORT/PROTO, --icmp-type N or --fragment".into(),
            )
            .into());
        }
    };
    let verdict = reference::verdict(&policy, &PacketClass::Ip { src: args.src, l4 });
    let rule = verdict
        .rule
        .and_then(|i| policy.rules.get(i))
        .map(|r| r.name.clone());
    if args.live {
        return explain_live::run(explain_live::Live {
            policy: &policy,
            src: args.src,
            l4,
            verdict: &verdict,
            rule,
            iface: args.iface,
            root,
            output: args.output,
        });
    }
    if args.output == OutputFormat::Json {
        output::print_json(&json!({
            "src": args.src.to_string(),
            "packet": output::packet_json(&l4),
            "verdict": if verdict.pass { "pass" } else { "drop" },
            "reason": verdict.reason.name(),
            "rule": rule,
            "set": verdict.set,
            "mode": policy.mode.name(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let action = if verdict.pass { "PASS" } else { "DROP" };
    let mut because = vec![format!("reason {}", verdict.reason.name())];
    if let Some(rule) = &rule {
        because.push(format!("rule {rule}"));
    }
    if let Some(set) = &verdict.set {
        because.push(format!("set {set}"));
    }
    let monitor = if policy.mode == policy::Mode::Monitor && !verdict.reason.passes() {
        " (monitor mode: would drop, passes)"
    } else {
        ""
    };
    println!("{action}{monitor}: {} ({})", args.src, because.join(", "));
    let packet = airlock::reference::PacketClass::Ip { src: args.src, l4 };
    if verdict.reason == airlock_common::Reason::DefaultDrop
        && airlock::reference::can_answer_flow(&packet)
    {
        println!(
            "  unless it is a reply to a flow this host opened (return traffic), which passes"
        );
    }
    Ok(ExitCode::SUCCESS)
}
