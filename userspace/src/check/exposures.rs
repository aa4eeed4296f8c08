//! Who reaches each listening socket, over each family it takes: through which
//! interfaces (filtered or not), and what the policy says for the filtered ones.

use std::collections::BTreeSet;

use super::{Exposure, Family, Inputs, NetLink, Reach, Who, reach, service};

/// Up, not loopback, and has received packets: traffic arrives there.
pub(super) fn has_traffic(link: &NetLink) -> bool {
    link.up && !link.loopback && link.rx_packets > 0
}

pub(super) fn exposures(inputs: &Inputs<'_>) -> Vec<Exposure> {
    let filtered_names: BTreeSet<&str> = inputs.filters.iter().map(|f| f.iface.as_str()).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for listener in inputs.listeners {
        if listener.loopback_only() {
            continue;
        }
        // A socket bound to a device takes traffic from that device only; any
        // other socket takes it from every interface (Linux accepts a packet for any
        // of the host's addresses on any interface).
        let paths: Vec<&NetLink> = inputs
            .links
            .iter()
            .filter(|l| l.up && !l.loopback)
            .filter(|l| listener.bound_ifindex == 0 || l.ifindex == listener.bound_ifindex)
            .collect();
        if listener.bound_ifindex != 0 && paths.is_empty() {
            continue; // bound to loopback, or to a device that is down
        }
        let filtered: Vec<String> = paths
            .iter()
            .filter(|l| filtered_names.contains(l.name.as_str()))
            .map(|l| l.name.clone())
            .collect();
        let unfiltered: Vec<String> = paths
            .iter()
            .filter(|l| !filtered_names.contains(l.name.as_str()) && has_traffic(l))
            .map(|l| l.name.clone())
            .collect();
        let families = [
            (Family::Ipv4, listener.takes_ipv4()),
            (Family::Ipv6, listener.takes_ipv6()),
        ];
        for (family, takes) in families {
            let key = (listener.proto, listener.port, family, listener.local);
            if !takes || !seen.insert(key) {
                continue;
            }
            let reach = match (inputs.policy, filtered.is_empty(), unfiltered.is_empty()) {
                (_, _, false) => Reach {
                    who: Who::Everyone,
                    sets: Vec::new(),
                    rules: Vec::new(),
                    why: format!("no filter on {}", unfiltered.join(", ")),
                    default_pass: false,
                },
                (Some(policy), false, true) => {
                    reach::reach(policy, listener.proto, listener.port, family)
                }
                _ if paths.is_empty() => Reach {
                    who: Who::Nobody,
                    sets: Vec::new(),
                    rules: Vec::new(),
                    why: "no interface is up".into(),
                    default_pass: false,
                },
                _ => Reach {
                    who: Who::Everyone,
                    sets: Vec::new(),
                    rules: Vec::new(),
                    why: "no Airlock filter is attached".into(),
                    default_pass: false,
                },
            };
            out.push(Exposure {
                proto: listener.proto,
                port: listener.port,
                family,
                address: listener.local.to_string(),
                process: inputs
                    .owners
                    .get(&listener.inode)
                    .cloned()
                    .or_else(|| listener.dnat.as_ref().map(|to| format!("DNAT to {to}"))),
                who: reach.who,
                sets: reach.sets,
                rules: reach.rules,
                why: reach.why,
                default_pass: reach.default_pass,
                filtered: filtered.clone(),
                unfiltered: unfiltered.clone(),
                service: service(listener.proto, listener.port),
                probes: Vec::new(),
            });
        }
    }
    out.sort_by(|a, b| {
        (a.proto, a.port, a.family, &a.address).cmp(&(b.proto, b.port, b.family, &b.address))
    });
    out
}
