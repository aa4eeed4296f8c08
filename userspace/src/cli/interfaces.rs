//! Which interfaces a policy applies to: `--iface` wins, then the policy's list;
//! `auto` means the interface(s) carrying the default route.

use std::fs;

use airlock::policy::{Interfaces, Policy};
use anyhow::{Context as _, bail};

pub fn resolve(policy: &Policy, overrides: &[String]) -> anyhow::Result<Vec<String>> {
    let mut names = if !overrides.is_empty() {
        overrides.to_vec()
    } else {
        match &policy.interfaces {
            Interfaces::Named(names) => names.clone(),
            Interfaces::Auto => default_route_interfaces()?,
        }
    };
    names.sort();
    names.dedup();
    Ok(names)
}

/// Interfaces of the IPv4 and IPv6 default routes, from the kernel's route tables.
pub fn default_route_interfaces() -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    if let Ok(table) = fs::read_to_string("/proc/net/route") {
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000" {
                found.push(fields[0].to_owned());
            }
        }
    }
    if let Ok(table) = fs::read_to_string("/proc/net/ipv6_route") {
        // dest plen src plen nexthop metric refcnt use flags iface
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() == 10
                && fields[0].bytes().all(|b| b == b'0')
                && fields[1] == "00"
                && fields[9] != "lo"
            {
                found.push(fields[9].to_owned());
            }
        }
    }
    found.sort();
    found.dedup();
    if found.is_empty() {
        bail!(
            "interfaces: [auto] but this network namespace has no default route; name the interface with --iface"
        );
    }
    Ok(found)
}

/// Fails (before anything is applied) if any interface does not exist.
pub fn check_exist(names: &[String]) -> anyhow::Result<()> {
    for name in names {
        airlock::loader::interface_index(name).with_context(|| {
            format!("interface {name} does not exist in this network namespace")
        })?;
    }
    Ok(())
}
