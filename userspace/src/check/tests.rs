//! `assess` on synthetic facts: which paths reach a socket, and the findings.

use std::{net::IpAddr, path::Path};

use crate::loader::AttachMode;

use super::*;

fn link(name: &str, ifindex: u32, rx_packets: u64) -> NetLink {
    NetLink {
        name: name.into(),
        ifindex,
        up: true,
        loopback: name == "lo",
        rx_packets,
        xdp: Default::default(),
    }
}

fn listener(proto: Proto, local: &str, port: u16, bound_ifindex: u32) -> Listener {
    Listener {
        proto,
        local: local.parse::<IpAddr>().unwrap(),
        port,
        v6only: false,
        bound_ifindex,
        inode: 0,
        uid: 0,
        dnat: None,
    }
}

fn filter(iface: &str, mode: AttachMode) -> Filter {
    Filter {
        iface: iface.into(),
        ifindex: 2,
        mode,
        dir: "/nonexistent".into(),
        summary: None,
    }
}

fn report(
    policy: Option<&Policy>,
    links: &[NetLink],
    filters: &[Filter],
    listeners: &[Listener],
) -> Report {
    assess(&Inputs {
        policy,
        links,
        filters,
        listeners,
        owners: &HashMap::new(),
        region_max_age: DEFAULT_REGION_MAX_AGE,
        now: SystemTime::now(),
        differs_on: &[],
    })
}

#[test]
fn loopback_device_bound_and_unfiltered_paths_are_told_apart() {
    let policy = crate::policy::parse_str(
        "version: 1\ndefault: drop\nsets:\n  office: [198.51.100.0/24]\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [office]\n",
        Path::new("p.yaml"),
    )
    .unwrap();
    let links = [link("lo", 1, 10), link("eth0", 2, 10), link("eth1", 3, 5)];
    let filters = [filter("eth0", AttachMode::Driver)];
    let listeners = [
        listener(Proto::Tcp, "127.0.0.1", 6379, 0),
        // Dual-stack wildcard: both families.
        listener(Proto::Tcp, "::", 5432, 0),
        // Bound to the filtered device only.
        listener(Proto::Udp, "0.0.0.0", 53, 2),
    ];
    let r = report(Some(&policy), &links, &filters, &listeners);
    assert_eq!(r.exposures.len(), 3, "{:#?}", r.exposures);
    assert!(
        r.exposures.iter().all(|e| e.port != 6379),
        "loopback is left out"
    );
    let db: Vec<&Exposure> = r.exposures.iter().filter(|e| e.port == 5432).collect();
    assert_eq!(db.len(), 2);
    // eth1 has traffic and no filter: the database is open through it.
    assert!(
        db.iter()
            .all(|e| e.who == Who::Everyone && e.unfiltered == ["eth1"])
    );
    let dns = r.exposures.iter().find(|e| e.port == 53).unwrap();
    assert_eq!((dns.who, dns.unfiltered.len()), (Who::Nobody, 0));
    let kinds: Vec<Kind> = r.findings.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [Kind::ExposedService, Kind::UnfilteredInterface]);
    assert_eq!(r.worst(), Some(Severity::Critical));

    // With a filter on eth1 too, and in generic mode: reach follows the policy.
    let filters = [
        filter("eth0", AttachMode::Driver),
        filter("eth1", AttachMode::Skb),
    ];
    let r = report(Some(&policy), &links, &filters, &listeners);
    let db = r.exposures.iter().find(|e| e.port == 5432).unwrap();
    assert_eq!(
        (db.who, db.sets.clone()),
        (Who::Sets, vec!["office".to_owned()])
    );
    let kinds: Vec<Kind> = r.findings.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [Kind::GenericMode]);
}

#[test]
fn no_filter_at_all_is_critical_and_everything_is_open() {
    let links = [link("eth0", 2, 0)];
    let r = report(None, &links, &[], &[listener(Proto::Tcp, "0.0.0.0", 22, 0)]);
    assert_eq!(r.exposures[0].who, Who::Everyone);
    assert_eq!(r.exposures[0].why, "no Airlock filter is attached");
    assert_eq!(r.findings.len(), 1);
    assert_eq!(r.findings[0].kind, Kind::NoFilter);
}
