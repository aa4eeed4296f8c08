//! The policy language (YAML or JSON, `version: 1`): parsed with positions,
//! validated in full (every problem reported, each with file, line, column and
//! field), and turned into a checked [`Policy`] that the compiler and the reference
//! model consume. [`schema`] has the document as serde types, for other front ends.
//!
//! A `Policy` can only be made here, by validation, so everything downstream can
//! rely on its invariants: at most [`MAX_RULES`](airlock_common::maps::MAX_RULES)
//! rules, unique rule names, non-empty `from` and `ports`, no host bits, every
//! `except` inside one of its set's `cidrs`.

mod addr;
#[cfg(test)]
mod cidr_crates;
mod error;
mod fast_cidr;
pub mod import_cache;
mod import_file;
mod import_paths;
mod imports;
mod json;
mod ports;
mod provider_sets;
mod raw;
mod rules;
pub mod schema;
mod sets;
mod validate;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;

pub use error::{Diagnostic, DiagnosticKind, PolicyError};
pub use import_paths::imported_files;
pub use ports::{PortRange, PortSpecError, Proto};
#[doc(hidden)]
pub use validate::yaml_panics_caught;

/// Reads the policy at `path` (and any files it imports) and validates it.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = read_file(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, path)
}

/// The text of the policy file at `path`, which must be a regular file (symlinks
/// to one are followed): whoever controls a directory on the path could put a FIFO
/// there, whose open or read would block the CLI or the agent for ever, or a
/// device that never ends. Checked on the descriptor opened (fstat), which was
/// opened without waiting (O_NONBLOCK).
pub fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let (mut file, _) = import_file::open_regular(path).map_err(|error| match error {
        import_file::ReadError::Io(error) => error,
        import_file::ReadError::NotRegular(what) => std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {what}, not a regular file"),
        ),
        other => std::io::Error::other(other.message(path)),
    })?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Validates policy text, YAML or JSON (a `.json` origin, or text that is a JSON
/// object). `origin` names the file in messages and is the base for relative
/// `file:` imports (which are read from disk).
pub fn parse_str(text: &str, origin: &Path) -> Result<Policy, PolicyError> {
    match json::Format::of(origin, text) {
        json::Format::Yaml => validate::validate(text, origin),
        json::Format::Json => json::validate(text, origin),
    }
    .map_err(PolicyError::Invalid)
}

/// Validates policy text with `snapshots` (resolved path to snapshot text) read
/// in place of those files: a refreshed provider list is checked with the policy
/// before it replaces the file.
pub fn parse_str_with_snapshots(
    text: &str,
    origin: &Path,
    snapshots: std::collections::HashMap<PathBuf, String>,
) -> Result<Policy, PolicyError> {
    validate::validate_with(text, origin, snapshots).map_err(PolicyError::Invalid)
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// The file it came from (as given to [`load`] or [`parse_str`]).
    pub origin: PathBuf,
    /// Interfaces to attach to.
    pub interfaces: Interfaces,
    /// Enforce or only monitor.
    pub mode: Mode,
    /// What traffic to a port no rule covers gets.
    pub default: DefaultAction,
    /// How the XDP program is attached (`--xdp-mode` overrides it).
    pub xdp_mode: XdpMode,
    /// Sources that always pass.
    pub management: SourceGroup,
    /// Sources that are always dropped (management still wins).
    pub deny: SourceGroup,
    /// Rules in policy order; a rule's index is its bit in the compiled maps.
    pub rules: Vec<Rule>,
    /// Named sets as defined under `sets` (imports included).
    pub sets: BTreeMap<String, Arc<AddrSet>>,
    /// The sets that take a provider's list, with their snapshot and filter.
    pub provider_sets: BTreeMap<String, crate::ranges::ProviderSource>,
}

impl Policy {
    /// Index of the rule called `name`.
    pub fn rule_index(&self, name: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.name == name)
    }
}

/// Where to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// The interface of the default route, resolved when applying.
    Auto,
    /// These interfaces (valid Linux names, no duplicates).
    Named(Vec<String>),
    /// No `interfaces` key: whoever applies the policy names them (`--iface`).
    Unspecified,
}

/// `mode:`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Drop what the policy says to drop.
    #[default]
    Enforce,
    /// Compute and count verdicts, pass everything.
    Monitor,
}

impl Mode {
    /// `enforce` or `monitor`.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// `xdp_mode:`: how the XDP program is attached to each interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (in the driver) where the driver supports it, else generic. Any other
    /// failure of the native attach (another XDP program there, a driver limit) is
    /// an error, never a quiet fallback.
    #[default]
    Auto,
    /// Native only: fail where the driver has no native XDP.
    Native,
    /// Generic (skb) only.
    Generic,
}

impl XdpMode {
    /// `auto`, `native` or `generic`.
    pub const fn name(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }

    /// The mode named `name`, as the policy and `--xdp-mode` spell it.
    pub fn from_name(name: &str) -> Option<Self> {
        [XdpMode::Auto, XdpMode::Native, XdpMode::Generic]
            .into_iter()
            .find(|mode| mode.name() == name)
    }
}

/// `default:`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultAction {
    /// Traffic to ports no rule covers passes.
    #[default]
    Pass,
    /// Traffic to ports no rule covers is dropped.
    Drop,
}

impl DefaultAction {
    /// `pass` or `drop`.
    pub const fn name(self) -> &'static str {
        match self {
            DefaultAction::Pass => "pass",
            DefaultAction::Drop => "drop",
        }
    }
}

/// A set of addresses: the union of `cidrs` minus the union of `except`
/// (Kubernetes `ipBlock` semantics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrSet {
    /// The set's name, the region's name, or the inline CIDR as written.
    pub name: String,
    /// Networks in the set (imported ones included).
    pub cidrs: Vec<IpNet>,
    /// Holes; each lies inside at least one of `cidrs`.
    pub except: Vec<IpNet>,
}

impl AddrSet {
    /// Whether `ip` is in at least one of `cidrs` and in none of `except`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(&ip)) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// A list of set references (`management`, `deny`, or a rule's `from`): an address is
/// in the group iff it is in any of the sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceGroup {
    /// The referenced sets, in the order written. Shared with `Policy::sets`: a set of
    /// a million imported prefixes is held once, however many rules name it.
    pub sets: Vec<Arc<AddrSet>>,
}

impl SourceGroup {
    /// The first set (in policy order) containing `ip`.
    pub fn first_containing(&self, ip: IpAddr) -> Option<&AddrSet> {
        self.sets.iter().find(|s| s.contains(ip)).map(Arc::as_ref)
    }

    /// Whether any set contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.first_containing(ip).is_some()
    }
}

/// One rule: these ports, from these sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Unique name ([A-Za-z0-9_.-], at most 63 bytes).
    pub name: String,
    /// Covered destination ports (non-empty).
    pub ports: Vec<PortRange>,
    /// Allowed sources (non-empty).
    pub from: SourceGroup,
    /// Line of the rule in the policy file.
    pub line: usize,
}

impl Rule {
    /// Whether the rule covers destination `port` of `proto`.
    pub fn covers(&self, proto: Proto, port: u16) -> bool {
        self.ports.iter().any(|r| r.contains(proto, port))
    }
}

#[cfg(test)]
mod import_tests;
#[cfg(test)]
mod json_tests;
#[cfg(test)]
mod tests;
