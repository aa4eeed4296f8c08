//! The kernel's word on each exposure: one synthetic SYN (or datagram) from an
//! outsider (an address no set names) through each attached filter the socket is
//! reachable through, with BPF_PROG_TEST_RUN as `explain --live` does, compared with
//! the model's verdict for the same packet. A disagreement is a finding: either the
//! policy checked is not the one in force, or the compiler or program is wrong.

use std::collections::HashMap;

use super::{Exposure, Filter, Finding, Kind, Probe, Report, Severity, reach};
use crate::{policy::Policy, probe};

/// Probes every exposure's filtered interfaces and adds a finding per disagreement.
pub fn verify(report: &mut Report, policy: &Policy, filters: &[Filter]) {
    let mut done: HashMap<(String, String, crate::policy::Proto, u16), Probe> = HashMap::new();
    for exposure in &mut report.exposures {
        for iface in exposure.filtered.clone() {
            let Some(filter) = filters.iter().find(|f| f.iface == iface) else {
                continue;
            };
            let src = reach::outsider(policy, exposure.family);
            let key = (
                iface.clone(),
                src.to_string(),
                exposure.proto,
                exposure.port,
            );
            let result = done
                .entry(key)
                .or_insert_with(|| probe_one(policy, filter, exposure, src))
                .clone();
            exposure.probes.push(result);
        }
    }
    let mut told = std::collections::BTreeSet::new();
    for exposure in &report.exposures {
        for p in exposure
            .probes
            .iter()
            .filter(|p| !p.agree && p.error.is_none())
        {
            if !told.insert((p.iface.clone(), exposure.proto, exposure.port, &p.src)) {
                continue;
            }
            report.findings.push(disagreement(exposure, p));
        }
    }
    report
        .findings
        .sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)));
}

fn probe_one(
    policy: &Policy,
    filter: &Filter,
    exposure: &Exposure,
    src: std::net::IpAddr,
) -> Probe {
    let model = reach::verdict(policy, src, exposure.proto, exposure.port).pass;
    let frame = probe::frame(src, &reach::l4(exposure.proto, exposure.port));
    let word = |pass: bool| if pass { "pass" } else { "drop" };
    match probe::run_pinned(&filter.dir, &frame) {
        Ok(kernel) => Probe {
            iface: filter.iface.clone(),
            src: src.to_string(),
            model: word(model),
            kernel: Some(word(kernel.pass)),
            agree: kernel.pass == model,
            error: None,
        },
        Err(error) => Probe {
            iface: filter.iface.clone(),
            src: src.to_string(),
            model: word(model),
            kernel: None,
            agree: false,
            error: Some(error.to_string()),
        },
    }
}

fn disagreement(exposure: &Exposure, p: &Probe) -> Finding {
    Finding {
        severity: Severity::Critical,
        kind: Kind::KernelDisagrees,
        iface: Some(p.iface.clone()),
        port: Some(exposure.port),
        proto: Some(exposure.proto),
        message: format!(
            "the filter on {} decides {} for a new connection from {} to {}/{}, the policy checked says {}",
            p.iface,
            p.kernel.unwrap_or("?"),
            p.src,
            exposure.port,
            exposure.proto,
            p.model
        ),
    }
}
