use std::{io, path::PathBuf};

/// Failures putting a policy into the kernel or reading it back. Each names the
/// object (interface, map, path) it was working on.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("this airlock binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild it")]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no map {0} (binary and object out of step?)")]
    MissingMap(&'static str),
    #[error("the eBPF object has no program {0} (binary and object out of step?)")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("XDP link on {iface} cannot be pinned (kernel without bpf_link for XDP?): {source}")]
    Link {
        iface: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error(
        "{path} is not a bpffs mount in this mount namespace, and mounting one here would vanish \
         when this process exits (taking the filter with it) if this is not the host's mount \
         namespace (it is not, or /proc/1/ns/mnt cannot be read to tell); mount it in the host \
         namespace first: mount -t bpf -o mode=0700 bpf {path}"
    )]
    BpffsPrivateNamespace { path: PathBuf },
    /// The pin root, a pin directory or a pin that another user could change.
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error("mounting bpffs at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(
        "the filter pinned at {path} has map layout {found}, this airlock reads layout {expected}; \
         `airlock apply` with this airlock takes it over without a moment unfiltered (or use the \
         airlock that pinned it)"
    )]
    LayoutMismatch {
        path: PathBuf,
        iface: String,
        found: u32,
        expected: u32,
    },
    /// A filter of another layout that this apply would not take over: it stays.
    #[error(
        "the filter on {iface} was pinned by an airlock with map layout {found}; this airlock \
         (layout {expected}) did not take it over: {reason}. The old filter stays in force"
    )]
    TakeoverRefused {
        iface: String,
        found: u32,
        expected: u32,
        reason: String,
    },
    /// A takeover that failed; where it failed before its switch the old filter
    /// stays in force, after it the new one is (see `loader::takeover`).
    #[error(
        "taking over the filter on {iface} (map layout {found} to {expected}): {what}: {source}; \
         the filter the XDP link runs keeps enforcing, and the next apply finishes or undoes this"
    )]
    Takeover {
        iface: String,
        found: u32,
        expected: u32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("policy summary does not fit the META map ({len} bytes, at most {max})")]
    MetaTooLarge { len: usize, max: usize },
    #[error("no Airlock filter is pinned for interface {0}")]
    NotInstalled(String),
    #[error(
        "the source table in map {0} is not well formed (ranges unsorted or missing, or \
         a class it names not written)"
    )]
    MalformedSourceTable(&'static str),
    /// Found while building the tables, before anything is written.
    #[error(transparent)]
    Plan(#[from] crate::compile::ranges::PlanError),
    #[error(transparent)]
    LinkType(Box<crate::link_type::LinkTypeError>),
    #[error(
        "interface {iface} already has an XDP program: {programs}; Airlock does not attach \
         beside another XDP program (one that redirects or drops packets would take them \
         before Airlock sees them): detach it first (ip link set dev {iface} xdp off)"
    )]
    XdpOccupied { iface: String, programs: String },
    #[error(
        "native XDP on {iface}: its driver does not support native XDP ({source}); \
         use --xdp-mode auto or generic (xdp_mode in the policy)"
    )]
    NativeUnsupported {
        iface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "native XDP attach on {iface} failed: {source}; not falling back to generic mode \
         (only a driver without native XDP gets that): fix the cause, or choose generic \
         mode with --xdp-mode generic (xdp_mode: generic in the policy)"
    )]
    NativeFailed {
        iface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "the filter on {iface} is attached in {attached} mode, and {requested} mode was asked \
         for; an apply swaps the policy without re-attaching: run `airlock remove --iface \
         {iface}` and apply again to change the mode (the interface is unfiltered in between)"
    )]
    ModeMismatch {
        iface: String,
        attached: &'static str,
        requested: &'static str,
    },
}

impl LoaderError {
    /// Whether the request itself is wrong (an interface Airlock cannot filter, an
    /// attach mode the filter in place does not have): exit code 2, like a bad policy.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            LoaderError::LinkType(error) => {
                matches!(**error, crate::link_type::LinkTypeError::Unsupported { .. })
            }
            LoaderError::ModeMismatch { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether the kernel refused for want of privileges (EACCES, EPERM): such an
    /// error says nothing about what is pinned, attached or pending, and must never
    /// be read as "absent".
    pub fn is_permission_denied(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            if error
                .downcast_ref::<io::Error>()
                .is_some_and(|e| matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)))
            {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

impl From<crate::link_type::LinkTypeError> for LoaderError {
    fn from(error: crate::link_type::LinkTypeError) -> Self {
        LoaderError::LinkType(Box::new(error))
    }
}
