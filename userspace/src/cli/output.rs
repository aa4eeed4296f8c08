//! Human and JSON renderings shared by several verbs.

use airlock::{
    compile::Compiled,
    loader::{self, ApplyOutcome, LINK_PIN, LinkKind, PinRoot},
    policy::Policy,
    reference::L4,
    tunnels::TunnelWarning,
};
use serde_json::{Value, json};

use super::OutputFormat;

/// The version of every command's JSON shape (docs/schemas/): raised when a field
/// changes meaning or goes away; new fields may appear within a version.
pub const SCHEMA_VERSION: u64 = 1;

/// Prints one command's JSON result, with its `schema_version`.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut value = value.clone();
    if let Some(object) = value.as_object_mut() {
        object.insert("schema_version".into(), SCHEMA_VERSION.into());
    }
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

/// The packet `explain` judged, as fields: `protocol` (tcp, udp, icmp, icmpv6,
/// other, non_first_fragment) and the one number that goes with it.
pub fn packet_json(l4: &L4) -> Value {
    match *l4 {
        L4::Tcp { dst_port, .. } => json!({ "protocol": "tcp", "dst_port": dst_port }),
        L4::Udp { dst_port } => json!({ "protocol": "udp", "dst_port": dst_port }),
        L4::Icmp { icmp_type } => json!({ "protocol": "icmp", "icmp_type": icmp_type }),
        L4::Icmpv6 { icmp_type } => json!({ "protocol": "icmpv6", "icmp_type": icmp_type }),
        L4::Other { protocol } => json!({ "protocol": "other", "ip_protocol": protocol }),
        L4::NonFirstFragment => json!({ "protocol": "non_first_fragment" }),
    }
}

pub fn dry_run(
    policy: &Policy,
    compiled: &Compiled,
    ifaces: &[String],
    tunnels: &[TunnelWarning],
    format: OutputFormat,
) -> anyhow::Result<()> {
    let stats = compiled.stats();
    if format == OutputFormat::Json {
        return print_json(&json!({
            "policy": policy.origin.display().to_string(),
            "interfaces": ifaces,
            "mode": policy.mode.name(),
            "default": policy.default.name(),
            "stats": stats,
            "tunnel_warnings": tunnels,
        }));
    }
    println!("dry run: nothing was loaded");
    println!("policy:     {}", policy.origin.display());
    println!("interfaces: {}", ifaces.join(", "));
    println!(
        "mode:       {}    default: {}",
        policy.mode.name(),
        policy.default.name()
    );
    println!(
        "map entries: {} IPv4, {} IPv6 (from {} / {} distinct prefixes); port segments: {} tcp, {} udp",
        stats.entries.v4,
        stats.entries.v6,
        stats.distinct_prefixes.v4,
        stats.distinct_prefixes.v6,
        stats.tcp_segments,
        stats.udp_segments
    );
    println!(
        "management: {} IPv4, {} IPv6 prefixes; deny: {} IPv4, {} IPv6 prefixes",
        stats.management.v4, stats.management.v6, stats.deny.v4, stats.deny.v6
    );
    println!(
        "{:<4} {:<28} {:>8} {:>8}  ports",
        "#", "rule", "IPv4", "IPv6"
    );
    for (index, rule) in stats.per_rule.iter().enumerate() {
        println!(
            "{:<4} {:<28} {:>8} {:>8}  {}",
            index,
            rule.name,
            rule.prefixes.v4,
            rule.prefixes.v6,
            rule.ports.join(", ")
        );
    }
    print_tunnel_warnings(tunnels);
    Ok(())
}

/// What an apply did on each interface. `attached` is read back from the kernel
/// (the pinned link is on this interface); `action` says whether this apply attached
/// the filter or swapped the policy of one already attached.
pub fn applied(
    root: &PinRoot,
    done: &[ApplyOutcome],
    compiled: &Compiled,
    tunnels: &[TunnelWarning],
    format: OutputFormat,
) -> anyhow::Result<()> {
    let stats = compiled.stats();
    if format == OutputFormat::Json {
        let items: Vec<_> = done
            .iter()
            .map(|o| {
                let link = root.interface_dir(&o.iface).join(LINK_PIN);
                let attached = loader::pinned_link_state(&link, LinkKind::Xdp)
                    .is_ok_and(|l| Some(l.ifindex) == loader::interface_index(&o.iface));
                json!({
                    "iface": o.iface,
                    "attached": attached,
                    "action": match (o.attached, o.took_over_layout) {
                        (true, _) => "attached",
                        (false, Some(_)) => "took_over",
                        (false, None) => "swapped",
                    },
                    "attach_mode": o.attach_mode.as_str(),
                    "generation": o.generation,
                    "serial": o.serial,
                })
            })
            .collect();
        return print_json(&json!({
            "applied": items,
            "stats": stats,
            "tunnel_warnings": tunnels,
        }));
    }
    for o in done {
        let action = match (o.attached, o.took_over_layout) {
            (true, _) => format!("attached ({} mode)", o.attach_mode.as_str()),
            (false, Some(found)) => format!(
                "took over the filter pinned with map layout {found} (the XDP link switched programs atomically; counters restart at zero)"
            ),
            (false, None) => "policy swapped atomically".to_owned(),
        };
        println!(
            "{}: {action}; {} rules, {} IPv4 + {} IPv6 prefixes (apply #{})",
            o.iface, stats.rules, stats.entries.v4, stats.entries.v6, o.serial
        );
    }
    print_tunnel_warnings(tunnels);
    Ok(())
}

/// Tunnel devices that bypass the filter (also logged as warnings).
fn print_tunnel_warnings(tunnels: &[TunnelWarning]) {
    for warning in tunnels {
        println!("warning: {warning}");
    }
}
