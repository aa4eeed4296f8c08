//! Which interfaces a policy applies to: explicit names (or shell globs such as
//! `eth*`) on the command line win over the policy's `interfaces`, which is the
//! default when the command line names none; `auto` means the interface(s) of the
//! default route. A policy without `interfaces` needs the command line to name them.

use std::fs;

use crate::policy::{Interfaces, Policy};

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error(
        "interfaces: [auto] but this network namespace has no default route; name the interface with --iface"
    )]
    NoDefaultRoute,
    #[error("--iface {pattern:?} is not a valid glob: {source}")]
    BadPattern {
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
    #[error("interface {0} does not exist in this network namespace")]
    Missing(String),
    #[error(
        "the policy lists no interfaces: name them with --iface (e.g. --iface eth0), or add `interfaces: [eth0]` (or `[auto]`) to the policy"
    )]
    NoneNamed,
    #[error(
        "--iface {pattern:?} matches no interface in this network namespace (present: {present})"
    )]
    NoMatch { pattern: String, present: String },
}

impl InterfaceError {
    /// The request names nothing that can be filtered (exit 2, like bad usage).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            InterfaceError::NoneNamed
                | InterfaceError::NoMatch { .. }
                | InterfaceError::BadPattern { .. }
        )
    }
}

/// The interfaces to filter, sorted. Globs are matched against the interfaces that
/// exist now (`lo` excepted); a glob that matches nothing contributes nothing.
pub fn resolve(policy: &Policy, overrides: &[String]) -> Result<Vec<String>, InterfaceError> {
    let mut names = if overrides.is_empty() {
        match &policy.interfaces {
            Interfaces::Named(names) => names.clone(),
            Interfaces::Auto => default_route_interfaces()?,
            Interfaces::Unspecified => return Err(InterfaceError::NoneNamed),
        }
    } else {
        expand(overrides)?
    };
    names.sort();
    names.dedup();
    Ok(names)
}

/// For a one-shot command: every glob in `overrides` must match an interface that
/// exists now (`lo` excepted); the agent instead waits for one to appear.
pub fn check_globs_match(overrides: &[String]) -> Result<(), InterfaceError> {
    let present = existing_interfaces();
    for pattern in overrides.iter().filter(|o| is_glob(o)) {
        let compiled =
            glob::Pattern::new(pattern).map_err(|source| InterfaceError::BadPattern {
                pattern: pattern.clone(),
                source,
            })?;
        if !present
            .iter()
            .any(|name| name != "lo" && compiled.matches(name))
        {
            let mut names: Vec<&str> = present
                .iter()
                .map(String::as_str)
                .filter(|n| *n != "lo")
                .collect();
            names.sort_unstable();
            return Err(InterfaceError::NoMatch {
                pattern: pattern.clone(),
                present: if names.is_empty() {
                    "none but lo".to_owned()
                } else {
                    names.join(", ")
                },
            });
        }
    }
    Ok(())
}

/// The interfaces `--iface` names or globs select, sorted (none when empty).
pub fn expand_overrides(overrides: &[String]) -> Result<Vec<String>, InterfaceError> {
    let mut names = expand(overrides)?;
    names.sort();
    names.dedup();
    Ok(names)
}

fn is_glob(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

fn expand(requested: &[String]) -> Result<Vec<String>, InterfaceError> {
    let mut names = Vec::new();
    let present = existing_interfaces();
    for request in requested {
        if !is_glob(request) {
            names.push(request.clone());
            continue;
        }
        let pattern = glob::Pattern::new(request).map_err(|source| InterfaceError::BadPattern {
            pattern: request.clone(),
            source,
        })?;
        names.extend(
            present
                .iter()
                .filter(|name| name.as_str() != "lo" && pattern.matches(name))
                .cloned(),
        );
    }
    Ok(names)
}

/// Interfaces of this network namespace, asked of the kernel (`if_nameindex`):
/// /sys/class/net lists those of the namespace sysfs was mounted in, which is not
/// this one for a process that entered it with `nsenter --net` or `setns`.
pub fn existing_interfaces() -> Vec<String> {
    nix::net::if_::if_nameindex()
        .map(|interfaces| {
            interfaces
                .iter()
                .filter_map(|i| i.name().to_str().ok().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Interfaces of the IPv4 and IPv6 default routes, from the kernel's route tables.
pub fn default_route_interfaces() -> Result<Vec<String>, InterfaceError> {
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
        return Err(InterfaceError::NoDefaultRoute);
    }
    Ok(found)
}

/// Fails if any interface does not exist (checked before anything is applied).
pub fn check_exist(names: &[String]) -> Result<(), InterfaceError> {
    match names
        .iter()
        .find(|name| crate::loader::interface_index(name).is_none())
    {
        Some(missing) => Err(InterfaceError::Missing(missing.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_recognised_and_plain_names_are_not() {
        assert!(is_glob("eth*"));
        assert!(is_glob("ens[0-9]"));
        assert!(!is_glob("eth0.100"));
    }

    fn policy(text: &str) -> Policy {
        crate::policy::parse_str(text, std::path::Path::new("p.yaml")).expect("valid policy")
    }

    #[test]
    fn the_command_line_overrides_the_policy_and_may_stand_in_for_it() {
        let listed = policy("version: 1\ninterfaces: [eth9]\n");
        assert_eq!(resolve(&listed, &[]).unwrap(), ["eth9"]);
        assert_eq!(resolve(&listed, &["eth7".into()]).unwrap(), ["eth7"]);
        let unlisted = policy("version: 1\n");
        assert!(matches!(
            resolve(&unlisted, &[]),
            Err(InterfaceError::NoneNamed)
        ));
        assert_eq!(resolve(&unlisted, &["eth7".into()]).unwrap(), ["eth7"]);
    }

    #[test]
    fn a_glob_that_matches_nothing_is_an_error() {
        let error = check_globs_match(&["nomatch-airlock*".into()]).unwrap_err();
        assert!(matches!(error, InterfaceError::NoMatch { .. }), "{error}");
        assert!(error.is_usage());
    }

    #[test]
    fn plain_names_pass_through_even_if_absent() {
        let names = expand(&["nonexistent0".to_owned()]).expect("expand");
        assert_eq!(names, ["nonexistent0"]);
    }
}
