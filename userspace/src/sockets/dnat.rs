//! Ports published by destination NAT (Docker with its userland proxy off, or
//! hand-written rules): no socket listens on the host port, a DNAT rule forwards
//! it. Read from the kernel's nftables ruleset (`nft -j list ruleset`, which also
//! shows the rules of iptables-nft, the iptables of current distributions); rules
//! of the legacy iptables backend are not visible there and are not read.
//!
//! XDP runs before netfilter, so such a port is filtered on the host port the
//! client used: each one is judged like a socket bound to the rule's destination
//! address (every address when the rule names none).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
};

use serde_json::Value;

use super::Listener;
use crate::policy::Proto;

/// Ports of one rule beyond this many (a wide range) are not listed one by one.
const MAX_PORTS_PER_RULE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DnatError {
    #[error("running nft: {0}")]
    Run(#[source] std::io::Error),
    #[error("nft -j list ruleset failed: {0}")]
    Failed(String),
    #[error("reading nft's JSON: {0}")]
    Json(#[source] serde_json::Error),
}

/// The ports DNAT rules of this network namespace publish, as listeners (with
/// `dnat` saying where they forward).
pub fn published() -> Result<Vec<Listener>, DnatError> {
    let output = Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .map_err(DnatError::Run)?;
    if !output.status.success() {
        return Err(DnatError::Failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    let ruleset: Value = serde_json::from_slice(&output.stdout).map_err(DnatError::Json)?;
    Ok(parse(&ruleset))
}

/// The DNAT rules of a ruleset (`nft -j list ruleset`'s output).
pub fn parse(ruleset: &Value) -> Vec<Listener> {
    let items = ruleset["nftables"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    // Base chains by (family, table, chain): their hook. A DNAT in an `output`
    // chain rewrites the host's own packets, not the network's.
    let hooks: HashMap<(&str, &str, &str), &str> = items
        .iter()
        .filter_map(|item| {
            let c = item.get("chain")?;
            Some((
                (
                    c["family"].as_str()?,
                    c["table"].as_str()?,
                    c["name"].as_str()?,
                ),
                c["hook"].as_str()?,
            ))
        })
        .collect();
    let mut out = Vec::new();
    for rule in items.iter().filter_map(|item| item.get("rule")) {
        let (Some(family), Some(table), Some(chain)) = (
            rule["family"].as_str(),
            rule["table"].as_str(),
            rule["chain"].as_str(),
        ) else {
            continue;
        };
        if hooks
            .get(&(family, table, chain))
            .is_some_and(|hook| *hook != "prerouting")
        {
            continue;
        }
        if let Some(published) = rule_ports(family, rule["expr"].as_array()) {
            out.extend(published);
        }
    }
    out.sort_by_key(|l| (l.proto, l.port, l.local));
    out.dedup();
    out
}

/// The listeners of one rule, if it is a DNAT with destination port matches.
fn rule_ports(family: &str, exprs: Option<&Vec<Value>>) -> Option<Vec<Listener>> {
    let exprs = exprs?;
    let target = exprs.iter().find_map(|e| {
        if let Some(dnat) = e.get("dnat") {
            let addr = dnat["addr"].as_str().unwrap_or("?");
            return Some(match dnat["port"].as_u64() {
                Some(port) if addr.contains(':') => format!("[{addr}]:{port}"),
                Some(port) => format!("{addr}:{port}"),
                None => addr.to_owned(),
            });
        }
        let xt = e.get("xt")?;
        (xt["type"] == "target" && xt["name"] == "DNAT").then(|| "(iptables DNAT)".to_owned())
    })?;
    // `dnat ip to` in an inet table translates IPv4 only (`dnat ip6 to`: IPv6).
    let translated = exprs.iter().find_map(|e| e.get("dnat")?["family"].as_str());
    let mut l4: Option<Proto> = None;
    let mut ports: Vec<(Option<Proto>, Vec<u16>)> = Vec::new();
    let mut daddr: Option<IpAddr> = None;
    for m in exprs.iter().filter_map(|e| e.get("match")) {
        let (left, right, op) = (&m["left"], &m["right"], m["op"].as_str().unwrap_or("=="));
        if !matches!(op, "==" | "in") {
            continue;
        }
        if left["meta"]["key"] == "l4proto"
            && let Some(p) = right.as_str().and_then(proto)
        {
            l4 = Some(p);
        }
        let payload = &left["payload"];
        match (payload["protocol"].as_str(), payload["field"].as_str()) {
            (Some(p @ ("tcp" | "udp" | "th")), Some("dport")) => {
                ports.push((proto(p), port_list(right)));
            }
            (Some("ip" | "ip6"), Some("daddr")) => {
                daddr = right.as_str().and_then(|a| a.parse().ok());
            }
            _ => {}
        }
    }
    let (v4, v6) = match (family, daddr, translated) {
        (_, Some(IpAddr::V4(_)), _) | ("ip", _, _) | (_, _, Some("ip")) => (true, false),
        (_, Some(IpAddr::V6(_)), _) | ("ip6", _, _) | (_, _, Some("ip6")) => (false, true),
        _ => (true, true),
    };
    let local = daddr.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let mut out = Vec::new();
    for (p, list) in ports {
        // `th dport` without `meta l4proto`: both.
        let protos = match p.or(l4) {
            Some(p) => vec![p],
            None => vec![Proto::Tcp, Proto::Udp],
        };
        for p in protos {
            for &port in &list {
                out.push(Listener {
                    proto: p,
                    local,
                    port,
                    v6only: local.is_ipv6() && !v4,
                    bound_ifindex: 0,
                    inode: 0,
                    uid: 0,
                    dnat: Some(target.clone()),
                });
            }
        }
    }
    Some(out)
}

fn proto(name: &str) -> Option<Proto> {
    match name {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        _ => None,
    }
}

/// A port, a range, or a set of them (anonymous sets only: a named set `@name`
/// would need another lookup and is skipped).
fn port_list(value: &Value) -> Vec<u16> {
    let mut out = Vec::new();
    let mut add = |v: &Value| {
        if let Some(p) = v.as_u64().and_then(|p| u16::try_from(p).ok()) {
            out.push(p);
        } else if let Some([a, b]) = v["range"].as_array().map(Vec::as_slice)
            && let (Some(a), Some(b)) = (a.as_u64(), b.as_u64())
        {
            let (a, b) = (a.min(65_535) as u16, b.min(65_535) as u16);
            out.extend((a..=b).take(MAX_PORTS_PER_RULE));
        }
    };
    match value["set"].as_array() {
        Some(items) => items.iter().for_each(&mut add),
        None => add(value),
    }
    out.truncate(MAX_PORTS_PER_RULE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnat_rules_of_nft_and_iptables_nft_become_listeners() {
        // As `nft -j list ruleset` prints them (nftables 1.0.6): Docker's rules
        // through iptables-nft, native rules, a set and a range, an output chain.
        let ruleset: Value = serde_json::from_str(r#"{"nftables": [
          {"chain": {"family": "ip", "table": "nat", "name": "PREROUTING", "hook": "prerouting", "type": "nat"}},
          {"chain": {"family": "ip", "table": "nat", "name": "OUTPUT", "hook": "output", "type": "nat"}},
          {"rule": {"family": "ip", "table": "nat", "chain": "PREROUTING", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 2375}},
            {"counter": {"packets": 0, "bytes": 0}}, {"xt": {"type": "target", "name": "DNAT"}}]}},
          {"rule": {"family": "ip", "table": "nat", "chain": "OUTPUT", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 1111}},
            {"dnat": {"addr": "192.0.2.9", "port": 1}}]}},
          {"rule": {"family": "ip", "table": "nat", "chain": "DOCKER", "expr": [
            {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "docker0"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 5353}},
            {"dnat": {"addr": "172.17.0.3", "port": 53}}]}},
          {"rule": {"family": "ip6", "table": "nat6", "chain": "pre", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "2001:db8::1"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [9200, {"range": [9300, 9301]}]}}},
            {"dnat": {"addr": "2001:db8::2", "port": 9200}}]}},
          {"rule": {"family": "inet", "table": "both", "chain": "pre", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 27017}},
            {"dnat": {"family": "ip", "addr": "172.17.0.5"}}]}},
          {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}},
            {"accept": null}]}}
        ]}"#).unwrap();
        let found: Vec<(Proto, u16, String, bool, String)> = parse(&ruleset)
            .into_iter()
            .map(|l| {
                (
                    l.proto,
                    l.port,
                    l.local.to_string(),
                    l.v6only,
                    l.dnat.unwrap(),
                )
            })
            .collect();
        let want = |p, port, local: &str, v6only, to: &str| {
            (p, port, local.to_owned(), v6only, to.to_owned())
        };
        assert_eq!(
            found,
            [
                want(Proto::Tcp, 2375, "0.0.0.0", false, "(iptables DNAT)"),
                want(Proto::Tcp, 9200, "2001:db8::1", true, "[2001:db8::2]:9200"),
                want(Proto::Tcp, 9300, "2001:db8::1", true, "[2001:db8::2]:9200"),
                want(Proto::Tcp, 9301, "2001:db8::1", true, "[2001:db8::2]:9200"),
                want(Proto::Tcp, 27017, "0.0.0.0", false, "172.17.0.5"),
                want(Proto::Udp, 5353, "0.0.0.0", false, "172.17.0.3:53"),
            ]
        );
    }
}
