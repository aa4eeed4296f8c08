//! Rules whose ports overlap the host's ephemeral port range (the ports its own
//! outgoing connections come from). Under `default: drop`, replies to those
//! connections are judged by the rule (rule 5 comes before return traffic), so a
//! DNS answer or a database reply to such a port is dropped unless its source is
//! in the rule's `from`: intermittently, whenever the kernel happens to pick a port
//! in the rule's range. Worth a warning before it bites.

use crate::policy::{DefaultAction, Policy};

/// Linux's default `net.ipv4.ip_local_port_range`.
const LINUX_DEFAULT: (u16, u16) = (32768, 60999);

/// This host's ephemeral port range (IPv4 and IPv6 share it).
pub fn local_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(str::parse::<u16>);
            Some((parts.next()?.ok()?, parts.next()?.ok()?))
        })
        .unwrap_or(LINUX_DEFAULT)
}

/// One warning per rule port range inside `range`, under `default: drop`.
pub fn overlaps(policy: &Policy, (low, high): (u16, u16)) -> Vec<String> {
    if policy.default != DefaultAction::Drop {
        return Vec::new();
    }
    let mut warnings = Vec::new();
    for rule in &policy.rules {
        for ports in &rule.ports {
            if ports.first <= high && low <= ports.last {
                warnings.push(format!(
                    "rule {} covers {ports}, inside this host's ephemeral ports {low}-{high}: replies to the host's own connections from those ports are judged by the rule, not passed as return traffic (narrow the range with net.ipv4.ip_local_port_range or ip_local_reserved_ports)",
                    rule.name
                ));
            }
        }
    }
    warnings
}

/// Logs [`overlaps`] for this host.
pub fn warn(policy: &Policy) {
    for warning in overlaps(policy, local_port_range()) {
        tracing::warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_str;
    use std::path::Path;

    fn policy(default: &str) -> Policy {
        let text = format!(
            "version: 1\ninterfaces: [eth0]\ndefault: {default}\nrules:\n  - name: game\n    ports: [60000-60100/udp, 5432/tcp]\n    from: [192.0.2.0/24]\n"
        );
        parse_str(&text, Path::new("p.yaml")).expect("valid")
    }

    #[test]
    fn a_rule_inside_the_ephemeral_range_is_named_under_default_drop_only() {
        let warnings = overlaps(&policy("drop"), LINUX_DEFAULT);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("rule game covers 60000-60100/udp"));
        assert!(overlaps(&policy("pass"), LINUX_DEFAULT).is_empty());
        assert!(overlaps(&policy("drop"), (61000, 65000)).is_empty());
    }
}
