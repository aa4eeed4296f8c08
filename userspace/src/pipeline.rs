//! The apply pipeline: what `airlock apply` and every agent reload run, in one
//! order, from one place.
//!
//! [`prepare`]:
//! 1. finish expired commit-confirms (their watchdog may have been killed), then
//!    take the writer lock, beginning the grace period a swap may have to wait for
//!    (it passes while the policy compiles; see `WriterLock::acquire_early`);
//! 2. compile the policy, beside steps 1 and 3 and reading the host facts the
//!    anti-lockout check needs (those only ask the host; the compile is the long
//!    step);
//! 3. the interfaces: every one must exist, or (the agent) those that do not yet
//!    are left for the reconcile that sees them appear; and each that exists must be
//!    of a link type one of our programs reads (`crate::link_type`);
//! 4. the anti-lockout check, refused unless `force`;
//! 5. refuse while a confirmation is pending on one of the interfaces.
//!
//! Refusals come in that order (a refused lock first, then the policy's size, then
//! the interfaces), whichever step finished first.
//!
//! [`Prepared::commit`]:
//! 6. apply on every interface or on none (on probation, with the rollback watchdog
//!    armed, for `confirm`);
//! 7. record the grace period after the flips, for the next apply.
//!
//! A dry run stops after step 4, without the lock and without touching the kernel.
//! Between the two halves the caller holds the writer lock (the agent reads the
//! counters the swap is about to retire there).

use std::{
    io,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    compile::{self, CompileError, Compiled, Prebuilt},
    interfaces::{self, InterfaceError},
    link_type::{self, LinkTypeError},
    loader::{
        self, ApplyAllError, ApplyOutcome, LoaderError, PendingConfirm, PinRoot, PolicySummary,
        WriterLock,
    },
    policy::{Diagnostic, DiagnosticKind, Mode, Policy, PolicyError, XdpMode},
    safety::{
        confirm::{self, PendingConflict, RolledBack, WatchdogError},
        lockout::{self, Assessment, Facts, LockoutError},
    },
};

/// How to apply. `Options::default()` is a plain `airlock apply`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Interface names or globs that override the policy's `interfaces`.
    pub iface_overrides: Vec<String>,
    /// What to do about a selected interface that does not exist.
    pub missing: Missing,
    /// Apply although the anti-lockout check refuses.
    pub force: bool,
    /// Everything up to the checks; no lock, nothing written.
    pub dry_run: bool,
    /// On probation: rolled back unless confirmed within this time.
    pub confirm: Option<Duration>,
    /// How the grace period after the flips is put on record.
    pub grace_record: GraceRecord,
    /// Overrides the policy's `xdp_mode` (`--xdp-mode`).
    pub xdp_mode: Option<XdpMode>,
    /// Overrides the policy's `mode` (a fleet canary's monitor stage: the
    /// revision's text is applied as it is, in monitor mode).
    pub mode: Option<Mode>,
}

/// A selected interface that does not exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Missing {
    /// Refuse the apply (the CLI: the operator named it).
    #[default]
    Refuse,
    /// Apply to the others (the agent: it applies once the interface appears).
    Skip,
}

/// Who records the grace period after an apply's flips.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GraceRecord {
    /// A detached `airlock grace-record` process: for a caller about to exit.
    #[default]
    Process,
    /// A thread of this process: for one that keeps running (the agent).
    Thread,
}

/// Why an apply did not happen. Nothing was changed, except by `Apply` and
/// `Watchdog`, whose apply was undone (see their messages).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Interfaces(#[from] InterfaceError),
    #[error(transparent)]
    LinkType(#[from] LinkTypeError),
    /// Valid, but more than the kernel maps hold (see [`compile`]).
    #[error(transparent)]
    Capacity(#[from] PolicyError),
    #[error(transparent)]
    Lockout(#[from] LockoutError),
    #[error(transparent)]
    Pending(#[from] PendingConflict),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Apply(#[from] ApplyAllError),
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
    #[error("a dry run cannot be committed")]
    DryRun,
}

impl Error {
    /// The policy or the request was refused, as opposed to the kernel failing it:
    /// the CLI's exit code 2.
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::Capacity(_) | Error::Lockout(_) | Error::Pending(_) | Error::DryRun => true,
            Error::LinkType(error) => matches!(error, LinkTypeError::Unsupported { .. }),
            Error::Loader(error) => error.is_invalid_input(),
            Error::Apply(error) => error.source.is_invalid_input(),
            Error::Interfaces(error) => error.is_usage(),
            _ => false,
        }
    }
}

/// What an apply puts in force, and what the checks found.
#[derive(Debug)]
pub struct Plan {
    pub policy: Policy,
    pub compiled: Compiled,
    pub summary: PolicySummary,
    /// The interfaces the policy (or the overrides) select, sorted.
    pub selected: Vec<String>,
    /// Those the apply puts the policy on: all of `selected`, or with
    /// [`Missing::Skip`] the ones that exist.
    pub ifaces: Vec<String>,
    /// The anti-lockout check's findings (already logged).
    pub assessment: Assessment,
    /// Expired commit-confirms rolled back first (already logged).
    pub expired: Vec<RolledBack>,
}

/// A plan checked and ready, holding the writer lock (unless a dry run).
pub struct Prepared {
    pub plan: Plan,
    root: PinRoot,
    writer: Option<WriterLock>,
    confirm: Option<Duration>,
    grace_record: GraceRecord,
}

/// What an apply did.
#[derive(Debug)]
pub struct Applied {
    pub plan: Plan,
    /// One per interface of `plan.ifaces`.
    pub outcomes: Vec<ApplyOutcome>,
    /// The probation the policy is on (`Options::confirm`).
    pub pending: Option<PendingConfirm>,
}

/// The anti-lockout check's host facts, read on a thread of their own from the
/// moment a caller knows it will apply (the CLI: before it reads the policy), so
/// [`prepare_with`] finds them read. They are the same facts either way, read
/// before anything is written: the read comes some milliseconds earlier.
pub struct EarlyFacts {
    reading: Option<std::thread::JoinHandle<Facts>>,
}

impl EarlyFacts {
    /// Starts reading them; if the OS refuses a thread, [`prepare_with`] reads them.
    pub fn start() -> EarlyFacts {
        let started = Instant::now();
        let reading = std::thread::Builder::new()
            .name("host-facts".into())
            .spawn(move || {
                let facts = Facts::from_system();
                tracing::debug!(us = started.elapsed().as_micros() as u64, "host facts read");
                facts
            })
            .ok();
        EarlyFacts { reading }
    }

    fn join(self) -> Facts {
        match self.reading {
            Some(reading) => reading
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => Facts::from_system(),
        }
    }
}

/// Steps 1-5 (1-4 for a dry run): everything before the kernel is written.
pub fn prepare(root: &PinRoot, policy: Policy, options: &Options) -> Result<Prepared, Error> {
    prepare_with(root, policy, options, None)
}

/// [`prepare`], with the host facts `facts` began reading, if given.
pub fn prepare_with(
    root: &PinRoot,
    mut policy: Policy,
    options: &Options,
    facts: Option<EarlyFacts>,
) -> Result<Prepared, Error> {
    if let Some(xdp_mode) = options.xdp_mode {
        policy.xdp_mode = xdp_mode;
    }
    if let Some(mode) = options.mode {
        policy.mode = mode;
    }
    let selected = interfaces::resolve(&policy, &options.iface_overrides)?;
    // The compile is the long step; everything else before the checks only asks
    // the host (the lock, the interfaces, the socket tables) and runs beside it.
    let started = std::time::Instant::now();
    let (compiled, host) = crate::parallel::join(
        || {
            // An apply's source tables are made as the families are folded.
            let compiled = if options.dry_run {
                compile(&policy)
            } else {
                compile_for_apply(&policy)
            };
            tracing::debug!(us = started.elapsed().as_micros() as u64, "compiled");
            compiled
        },
        || Host::read(root, &selected, options, facts, started),
    );
    // Refusals in the order the steps were once taken one after the other: the
    // lock, the policy's size, the interfaces.
    let Host {
        expired,
        writer,
        facts,
        ifaces,
    } = host;
    let writer = writer?;
    let compiled = compiled?;
    let ifaces = ifaces?;
    let assessment = lockout::assess(&policy, &facts, &selected);
    lockout::log_findings(&assessment, options.force);
    crate::safety::ephemeral::warn(&policy);
    if assessment.is_lockout() && !options.force {
        return Err(LockoutError { assessment }.into());
    }
    if !options.dry_run {
        confirm::check_no_pending(root, &ifaces)?;
    }
    let summary = PolicySummary::describe(&policy, &compiled, &policy.origin);
    Ok(Prepared {
        plan: Plan {
            policy,
            compiled,
            summary,
            selected,
            ifaces,
            assessment,
            expired,
        },
        root: root.clone(),
        writer,
        confirm: options.confirm,
        grace_record: options.grace_record,
    })
}

/// What [`prepare`] asks the host while the policy compiles.
struct Host {
    /// Expired commit-confirms rolled back first.
    expired: Vec<RolledBack>,
    /// The writer lock (none for a dry run).
    writer: Result<Option<WriterLock>, LoaderError>,
    /// The anti-lockout check's host facts.
    facts: Facts,
    /// The interfaces to apply to, each checked to exist (unless skipped) and to be
    /// of a link type our programs read.
    ifaces: Result<Vec<String>, Error>,
}

impl Host {
    /// Steps 1 and 3 and the host facts of step 2: the facts on a thread of their
    /// own (reading the socket tables is milliseconds on a busy host).
    fn read(
        root: &PinRoot,
        selected: &[String],
        options: &Options,
        early: Option<EarlyFacts>,
        started: Instant,
    ) -> Host {
        let lock = || {
            let (expired, writer) = if options.dry_run {
                (Vec::new(), Ok(None))
            } else {
                // Expired confirmations take the lock themselves, so they come
                // first (each rollback is logged where it happens).
                let expired = confirm::expire_due(root);
                (expired, WriterLock::acquire_early(root, selected).map(Some))
            };
            tracing::debug!(
                us = started.elapsed().as_micros() as u64,
                "writer lock held"
            );
            // The lock is held (or refused) and nothing is written yet.
            crate::test_hook::stop_at("compile");
            let ifaces = usable_interfaces(selected, options);
            tracing::debug!(
                us = started.elapsed().as_micros() as u64,
                "interfaces checked"
            );
            (expired, writer, ifaces)
        };
        let ((expired, writer, ifaces), facts) = match early {
            Some(early) => (lock(), early.join()),
            None => crate::parallel::join(lock, || {
                let facts = Facts::from_system();
                tracing::debug!(us = started.elapsed().as_micros() as u64, "host facts read");
                facts
            }),
        };
        Host {
            expired,
            writer,
            facts,
            ifaces,
        }
    }
}

/// The selected interfaces the apply puts the policy on: all of them, each of
/// which must exist ([`Missing::Refuse`], unless a dry run), or those that exist
/// ([`Missing::Skip`]). Those that exist must be of a link type one of our programs
/// reads (loopback and IP tunnels are refused, naming them and their type); one
/// that does not exist (a dry run) has nothing to look at.
fn usable_interfaces(selected: &[String], options: &Options) -> Result<Vec<String>, Error> {
    let ifaces = match options.missing {
        Missing::Refuse if !options.dry_run => {
            interfaces::check_exist(selected)?;
            selected.to_vec()
        }
        Missing::Refuse => selected.to_vec(),
        Missing::Skip => selected
            .iter()
            .filter(|iface| loader::interface_index(iface).is_some())
            .cloned()
            .collect(),
    };
    let present: Vec<String> = ifaces
        .iter()
        .filter(|iface| loader::interface_index(iface).is_some())
        .cloned()
        .collect();
    link_type::check_supported(&present)?;
    Ok(ifaces)
}

/// Compiles `policy`. The compiler's capacity errors (more rules or prefixes than
/// the maps hold) come back as a diagnostic of the policy file, like every other
/// reason a policy cannot be put in force: validation leaves that count to the
/// compiler (`policy` does not depend on `compile`).
pub fn compile(policy: &Policy) -> Result<Compiled, PolicyError> {
    compile::compile(policy)
        .map_err(|error| PolicyError::Invalid(vec![capacity_diagnostic(&error, &policy.origin)]))
}

/// [`compile`], with the source tables planned as the families are folded
/// (`compile::compile_for_apply`), for the write to lay out.
fn compile_for_apply(policy: &Policy) -> Result<Compiled, PolicyError> {
    compile::compile_for_apply(policy)
        .map_err(|error| PolicyError::Invalid(vec![capacity_diagnostic(&error, &policy.origin)]))
}

fn capacity_diagnostic(error: &CompileError, origin: &Path) -> Diagnostic {
    let (field, hint) = match error {
        CompileError::TooManyRules { .. } => (
            "rules",
            Some("merge rules that share sources, or ports that share rules"),
        ),
        CompileError::TooManyPrefixes { .. } => (
            "sets",
            Some("aggregate adjacent ranges or drop unused sets"),
        ),
        // Its message says what to do.
        CompileError::TooManyClasses(_) => ("rules", None),
        CompileError::OverfullSlot(_) => ("sets", None),
    };
    // The policy as a whole is too large: its first line.
    Diagnostic {
        kind: DiagnosticKind::Capacity,
        file: origin.to_owned(),
        line: 1,
        column: 1,
        field: field.to_owned(),
        value: None,
        message: error.to_string(),
        hint: hint.map(str::to_owned),
    }
}

/// All of it: [`prepare`], then [`Prepared::commit`].
pub fn apply(root: &PinRoot, policy: Policy, options: &Options) -> Result<Applied, Error> {
    prepare(root, policy, options)?.commit()
}

impl Prepared {
    /// Steps 6-7: puts the plan in force on every interface or on none.
    pub fn commit(self) -> Result<Applied, Error> {
        let Prepared {
            plan,
            root,
            writer,
            confirm,
            grace_record,
        } = self;
        let writer = writer.ok_or(Error::DryRun)?;
        let pending = confirm.map(confirm::new_probation);
        let mut summary = plan.summary.clone();
        summary.pending_confirm = pending.clone();
        if grace_record == GraceRecord::Process {
            start_grace_record(&root);
        }
        // The source tables were planned with the compile (`compile_for_apply`).
        let outcomes = loader::apply_all(&writer, &root, &plan.ifaces, &plan.compiled, &summary);
        // Tables no write took (an apply that failed before one) are not kept.
        Prebuilt::close(&plan.compiled);
        let outcomes = outcomes?;
        if let Some(pending) = &pending {
            confirm::arm_or_roll_back(&writer, &root, pending)?;
        }
        drop(writer);
        if !outcomes.is_empty() {
            record_grace_period(&root, grace_record);
        }
        Ok(Applied {
            plan,
            outcomes,
            pending,
        })
    }
}

/// The grace period after these flips passes after the apply returns, and the next
/// apply finds it on record instead of waiting for one itself. Nothing depends on it.
fn record_grace_period(root: &PinRoot, how: GraceRecord) {
    let started = match how {
        GraceRecord::Thread => {
            let root = root.clone();
            std::thread::Builder::new()
                .name("grace-record".into())
                .spawn(move || loader::record_grace_periods(&root))
                .map(drop)
        }
        GraceRecord::Process => spawn_grace_record(root),
    };
    if let Err(error) = started {
        tracing::debug!(%error, "grace period not recorded; the next apply waits for one");
    }
}

/// Starts `airlock grace-record` for `root`: hands the go to the one
/// `start_grace_record` began for it, or spawns one.
fn spawn_grace_record(root: &PinRoot) -> io::Result<()> {
    let early = EARLY_GRACE_RECORD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(early) = early {
        let started = early
            .starting
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        if early.root == root.path()
            && let Ok(mut stdin) = started
        {
            use std::io::Write as _;
            // Once written the helper reads the flips in force, which are
            // this apply's; closed unwritten, it records nothing.
            return stdin.write_all(b"g");
        }
    }
    grace_record_command(root)?.spawn().map(drop)
}

/// `airlock grace-record` for `root`, detached (a process group of its own, stdio
/// on /dev/null), spawned through `posix_spawn`, so without a `pre_exec` hook or
/// a working directory to change to (glibc before 2.29 cannot spawn with one): a
/// fork would copy the page tables of this process, which may hold a compiled
/// policy. Nothing needs it to survive a hangup of the session (unlike the confirm
/// watchdog, in a session of its own).
fn grace_record_command(root: &PinRoot) -> io::Result<std::process::Command> {
    use std::os::unix::process::CommandExt as _;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .arg("grace-record")
        .arg("--pin-root")
        .arg(root.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        // The helper starts while the apply lays out its tables on both cores,
        // and allocates a few KiB: with transparent huge pages its allocator
        // would zero three 2 MiB pages (a third of its start-up CPU, 0.3-0.4 ms)
        // to use a few of their 4 KiB.
        .env("MIMALLOC_ALLOW_THP", "0");
    Ok(command)
}

/// The helper `start_grace_record` began, and for which pin root.
struct EarlyGraceRecord {
    root: std::path::PathBuf,
    starting: std::thread::JoinHandle<io::Result<std::process::ChildStdin>>,
}

static EARLY_GRACE_RECORD: std::sync::Mutex<Option<EarlyGraceRecord>> = std::sync::Mutex::new(None);

/// Starts the `airlock grace-record` an apply of `root` leaves behind as it
/// exits ([`GraceRecord::Process`]) now, on a thread of its own, waiting on its
/// stdin for the go the apply gives after its flips. Spawning waits for the
/// helper's `exec` (a vfork), a millisecond or more, several on a busy host:
/// begun as the commit begins, it passes while the source tables are built (one
/// family's table takes a core well after the other's is done), not after the
/// flips. Should this process exit without the go (a failure, a kill), the
/// helper reads the end of its stdin and records nothing.
fn start_grace_record(root: &PinRoot) {
    let Ok(mut command) = grace_record_command(root) else {
        return;
    };
    command
        .arg("--after-go")
        .stdin(std::process::Stdio::piped());
    let starting = std::thread::Builder::new()
        .name("grace-record".into())
        .spawn(move || {
            let mut child = command.spawn()?;
            child
                .stdin
                .take()
                .ok_or_else(|| io::Error::other("no stdin"))
        });
    match starting {
        Ok(starting) => {
            *EARLY_GRACE_RECORD
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(EarlyGraceRecord {
                root: root.path().to_owned(),
                starting,
            });
        }
        Err(error) => tracing::debug!(%error, "grace-record not started early"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{self, Mode};

    /// The mode override (a fleet canary's monitor stage) reaches what would be
    /// applied: the compiled policy and its summary, from an unchanged text.
    #[test]
    fn mode_override_reaches_the_plan() {
        let text = "version: 1\nmode: enforce\ninterfaces: [nosuch0]\nrules:\n  - name: db\n    ports: [5432/tcp]\n    from: [198.51.100.0/24]\n";
        let dir = tempfile::tempdir().unwrap();
        let root = PinRoot::new(dir.path());
        let plan = |mode| {
            let policy = policy::parse_str(text, std::path::Path::new("p.yaml")).unwrap();
            let options = Options {
                dry_run: true,
                mode,
                ..Options::default()
            };
            prepare(&root, policy, &options).unwrap().plan
        };
        let staged = plan(Some(Mode::Monitor));
        assert_eq!(staged.policy.mode, Mode::Monitor);
        assert_eq!(staged.summary.mode, "monitor");
        let enforced = plan(None);
        assert_eq!(enforced.policy.mode, Mode::Enforce);
        assert_eq!(enforced.summary.mode, "enforce");
        assert_ne!(
            format!("{:?}", staged.compiled),
            format!("{:?}", enforced.compiled),
            "the compiled policy carries the mode"
        );
    }

    /// The interfaces are checked while the policy compiles, but a policy too large
    /// for the maps is refused as such first, as when the steps ran one after the
    /// other; a policy that fits is refused for the interface.
    #[test]
    fn refusals_keep_their_order_though_checked_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let root = PinRoot::new(dir.path());
        let prepare_rules = |count: usize| {
            let text = "version: 1\ninterfaces: [lo]\nrules:\n  - {name: r, ports: [22], from: [192.0.2.0/24]}\n";
            let mut policy = policy::parse_str(text, Path::new("p.yaml")).unwrap();
            // Validation refuses a text with that many rules: past it, the
            // compiler's limit is what refuses them.
            let rule = policy.rules[0].clone();
            policy.rules.resize(count, rule);
            let options = Options {
                dry_run: true,
                ..Options::default()
            };
            prepare(&root, policy, &options).err().expect("refused")
        };
        let too_large = prepare_rules(airlock_common::maps::MAX_RULES + 1);
        assert!(matches!(too_large, Error::Capacity(_)), "{too_large}");
        let loopback = prepare_rules(1);
        assert!(
            matches!(loopback, Error::LinkType(LinkTypeError::Unsupported { .. })),
            "{loopback}"
        );
    }

    #[test]
    fn capacity_errors_are_diagnostics_of_the_policy_file() {
        let error = CompileError::TooManyPrefixes {
            family: "IPv4",
            count: 3,
            limit: 2,
        };
        let d = capacity_diagnostic(&error, Path::new("p.yaml"));
        assert_eq!(d.kind, DiagnosticKind::Capacity);
        assert_eq!(
            d.to_string(),
            "p.yaml:1:1: sets: the policy compiles to 3 IPv4 prefixes, more than the limit of 2; aggregate adjacent ranges or drop unused sets"
        );
        let error = CompileError::TooManyRules {
            count: 65,
            limit: 64,
        };
        let d = capacity_diagnostic(&error, Path::new("p.yaml"));
        assert_eq!(
            (d.kind, d.field.as_str()),
            (DiagnosticKind::Capacity, "rules")
        );
    }

    #[test]
    fn a_policy_within_the_limits_compiles() {
        let policy = crate::policy::parse_str(
            "version: 1\ninterfaces: [eth0]\nrules:\n  - {name: a, ports: [22], from: [192.0.2.0/24]}\n",
            Path::new("p.yaml"),
        )
        .unwrap();
        assert_eq!(compile(&policy).unwrap().rule_names, ["a"]);
    }
}
