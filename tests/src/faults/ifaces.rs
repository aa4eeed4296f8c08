//! Interfaces changing under the agent: the filtered interface renamed (and back),
//! and the default route moved to another interface under `interfaces: [auto]`.

use std::time::{Duration, Instant};

use super::{Tally, policy, spawn_agent, xdp_attached};
use crate::{
    agent,
    fixture::{ALLOWED, Fixture, PORT, REFUSED},
    netns::{Namespace, addr, unique_name, wait_until},
};

fn ip(ns: &Namespace, args: &[&str]) {
    ns.ip(args);
}

/// The filtered interface renamed while the agent runs (down, renamed, up: the
/// kernel refuses to rename a device that is up), then renamed back. The filter is
/// bound to the device, not the name: it must keep enforcing on the renamed device;
/// the agent, whose policy names the old name, must say it is missing (not ready)
/// and be ready again once the name is back.
pub fn renamed(f: &Fixture, t: &mut Tally) {
    let office = policy(f, "office");
    let state = f.dir.path().join("state-rename");
    let agent = match spawn_agent(f, &office, &state, false) {
        Ok(agent) => agent,
        Err(e) => return t.fail(format!("rename: {e}")),
    };
    if !super::ready_within(f, Duration::from_secs(10)) {
        return t.fail(format!("rename: agent not ready: {}", agent.log()));
    }
    t.office(f, "before the rename");
    let (server, old) = (&f.bed.server, f.bed.server_if.as_str());
    let new = unique_name("alren");
    t.faults += 1;
    ip(server, &["link", "set", old, "down"]);
    ip(server, &["link", "set", old, "name", &new]);
    ip(server, &["link", "set", &new, "up"]);
    if !xdp_attached(server, &new) {
        t.fail("renamed: the filter is no longer attached to the renamed device".into());
    }
    // The device's addresses went with it; wait for the link to come up.
    wait_until(Duration::from_secs(3), || f.gets_in(addr::OFFICE_V4));
    t.office(f, "renamed, while the agent runs");
    let not_ready = wait_until(Duration::from_secs(5), || !agent::ready(f));
    let said = agent.log().contains("does not exist");
    if !not_ready || !said {
        t.fail(format!(
            "renamed: the agent did not say the interface is missing (not ready {not_ready}, logged {said})"
        ));
    }
    t.office(f, "renamed, a few reconciles later");
    let status = f.airlock(&["status"]);
    if status.code != 0 {
        t.fail(format!("renamed: status failed: {}", status.stderr));
    }
    ip(server, &["link", "set", &new, "down"]);
    ip(server, &["link", "set", &new, "name", old]);
    ip(server, &["link", "set", old, "up"]);
    let back = Instant::now();
    if super::ready_within(f, Duration::from_secs(10)) {
        t.office(f, "renamed back");
        t.outcome(format!(
            "renamed: the filter stayed on the device and kept enforcing; the agent said the name is missing (not ready), and was ready {:.1?} after the name came back",
            back.elapsed()
        ));
    } else {
        t.fail(format!(
            "renamed back: the agent not ready: {}",
            agent.log()
        ));
    }
    drop(agent);
    let _ = f.airlock(&["remove", "--all"]);
}

/// A second veth pair between the test bed's namespaces, IPv6 only (so its routes
/// never compete with the first pair's): the server end has 2001:db8:100:2::1
/// (the office's /48) and 2001:db8:2::1; the client end .10 in each.
struct SecondLink<'a> {
    f: &'a Fixture,
    server_if: String,
}

const OFFICE2: &str = "2001:db8:100:2::10";
const STRANGER2: &str = "2001:db8:2::10";

impl<'a> SecondLink<'a> {
    fn new(f: &'a Fixture) -> Self {
        let server_if = unique_name("alsr2");
        let client_if = unique_name("alcl2");
        super::run(
            "ip",
            &[
                "link",
                "add",
                &client_if,
                "netns",
                f.bed.client.name(),
                "type",
                "veth",
                "peer",
                "name",
                &server_if,
                "netns",
                f.bed.server.name(),
            ],
        );
        for (ns, dev, host) in [
            (&f.bed.server, &server_if, "1"),
            (&f.bed.client, &client_if, "10"),
        ] {
            for net in ["2001:db8:100:2", "2001:db8:2"] {
                ns.ip(&[
                    "addr",
                    "add",
                    &format!("{net}::{host}/64"),
                    "dev",
                    dev,
                    "nodad",
                ]);
            }
            ns.ip(&["link", "set", dev, "up"]);
        }
        Self { f, server_if }
    }
}

impl Drop for SecondLink<'_> {
    fn drop(&mut self) {
        let _ = self
            .f
            .bed
            .server
            .command("ip")
            .args(["link", "del", &self.server_if])
            .status();
    }
}

/// `interfaces: [auto]` with the server's default route on the first pair, then
/// moved to the second: the agent must filter the new default-route interface
/// within a few reconciles, and the old one must keep its filter (it was enforcing;
/// removing it is for a reload to decide).
pub fn default_route_moved(f: &Fixture, t: &mut Tally) {
    let link2 = SecondLink::new(f);
    let server = &f.bed.server;
    // `onlink`: no wait for the kernel to have the gateway's prefix routed.
    server.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        addr::OFFICE_V6,
        "dev",
        &f.bed.server_if,
        "onlink",
    ]);
    let text = agent::policy_text(f, "office").replace(
        &format!("interfaces: [{}]", f.bed.server_if),
        "interfaces: [auto]",
    );
    let auto = f.write("auto.yaml", &text);
    let state = f.dir.path().join("state-auto");
    let agent = match spawn_agent(f, &auto, &state, false) {
        Ok(agent) => agent,
        Err(e) => return t.fail(format!("default route: {e}")),
    };
    if !super::ready_within(f, Duration::from_secs(10)) {
        return t.fail(format!("default route: agent not ready: {}", agent.log()));
    }
    t.office(f, "auto, the default route on the first link");
    let second_filtered =
        || f.bed.connects(OFFICE2, PORT, ALLOWED) && !f.bed.connects(STRANGER2, PORT, REFUSED);
    if xdp_attached(server, &link2.server_if) {
        t.fail("default route: the second link filtered before the route moved there".into());
    }
    t.faults += 1;
    server.ip(&[
        "-6",
        "route",
        "replace",
        "default",
        "via",
        OFFICE2,
        "dev",
        &link2.server_if,
        "onlink",
    ]);
    let moved = Instant::now();
    let followed = wait_until(Duration::from_secs(10), || {
        xdp_attached(server, &link2.server_if) && agent::ready(f)
    });
    let took = moved.elapsed();
    if followed {
        t.checks += 2;
        if !second_filtered() {
            t.wrong_verdicts += 1;
            t.fail(
                "default route moved: the new interface's filter does not enforce the policy"
                    .into(),
            );
        }
        t.office(f, "default route moved: the old interface");
        t.outcome(format!(
            "default route moved under [auto]: the new interface filtered after {took:.1?}, the old one kept its filter"
        ));
    } else {
        t.fail(format!(
            "default route moved under [auto]: the new interface not filtered within 10 s: {}",
            agent.log()
        ));
    }
    drop(agent);
    let _ = server
        .command("ip")
        .args(["-6", "route", "del", "default"])
        .status();
    let _ = f.airlock(&["remove", "--all"]);
}

pub fn all(f: &Fixture) -> Tally {
    let mut t = Tally::new("interfaces");
    renamed(f, &mut t);
    default_route_moved(f, &mut t);
    t
}
