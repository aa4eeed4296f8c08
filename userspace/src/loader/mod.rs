//! Puts a compiled policy into the kernel and reads it back: load the embedded
//! object, fill its maps, attach to an interface, pin everything under the pin root
//! so the filter outlives the process; or, when a filter is already there, swap the
//! policy in place (atomically, without detaching).

mod batch;
mod error;
mod flows;
mod grace;
mod grace_record;
mod link;
mod mapping;
mod meta;
mod object;
mod pins;
mod policy_maps;
mod source_tables;
mod sys;
mod takeover;
mod writer;
mod xdp_attach;

use std::{fs, path::Path};

use airlock_common::{EGRESS_PROGRAM_NAME, LAYOUT_VERSION, MAP_META, PROGRAM_NAME};
use aya::{
    Ebpf,
    programs::{SchedClassifier, Xdp},
};

pub use error::LoaderError;
pub use flows::{Flow, FlowOccupancy, FlowTable, monotonic_ns, seed_from_socket_table};
pub use grace_record::record_grace_periods;
pub use link::{
    AttachMode, LinkKind, LinkState, egress_supported, interface_index, link_state,
    pinned_link_state, program_name,
};
pub use meta::{PendingConfirm, PolicySummary, Restored, RuleSummary};
pub use object::{datapath_log, load_object, load_object_logging, set_datapath_log};
pub use pins::{
    DEFAULT_PIN_ROOT, EGRESS_LINK_PIN, EGRESS_PROGRAM_PIN, LINK_PIN, PROGRAM_PIN, PinRoot,
    pinned_path,
};
pub use policy_maps::{Counters, PolicyMaps, SourcePrefixes};
pub use source_tables::TableShape;
pub use writer::WriterLock;

use crate::{
    compile::Compiled,
    link_type::{self, Framing, LinkFacts},
    policy::XdpMode,
};
use policy_maps::Grace;

/// The programs for interfaces whose frames start at the IP header (tun, WireGuard,
/// PPP...): same maps, parsing from offset 0.
pub const PROGRAM_NAME_L3: &str = "airlock_xdp_l3";
pub const EGRESS_PROGRAM_NAME_L3: &str = "airlock_egress_l3";

/// The XDP and egress programs that read `framing`'s frames.
pub fn program_names(framing: Framing) -> (&'static str, &'static str) {
    match framing {
        Framing::Ethernet => (PROGRAM_NAME, EGRESS_PROGRAM_NAME),
        Framing::Ip => (PROGRAM_NAME_L3, EGRESS_PROGRAM_NAME_L3),
    }
}

/// What `apply` did on one interface.
#[derive(Clone, Debug)]
pub struct ApplyOutcome {
    pub iface: String,
    /// True when the filter was attached by this apply, false when an existing filter
    /// had its policy swapped.
    pub attached: bool,
    pub attach_mode: AttachMode,
    pub generation: u32,
    pub serial: u64,
    /// Set when this apply took over a filter pinned by an airlock with another map
    /// layout (the layout it had): see `takeover`.
    pub took_over_layout: Option<u32>,
}

/// A freshly loaded filter that is not attached or pinned: for BPF_PROG_TEST_RUN
/// (tests, `explain --live`) and as the first step of an install.
pub struct LoadedFilter {
    pub ebpf: Ebpf,
    pub maps: PolicyMaps,
}

impl LoadedFilter {
    /// The programs for Ethernet frames.
    pub fn load() -> Result<Self, LoaderError> {
        Self::load_for(Framing::Ethernet)
    }

    /// The programs for `framing`'s frames.
    pub fn load_for(framing: Framing) -> Result<Self, LoaderError> {
        Self::load_from(framing, load_object()?)
    }

    /// As [`LoadedFilter::load_for`], with datapath log level `level` (aya-log's
    /// numbering, 0: off) whatever the process-wide setting.
    pub fn load_logging(framing: Framing, level: u8) -> Result<Self, LoaderError> {
        Self::load_from(framing, object::load_object_logging(level)?)
    }

    fn load_from(framing: Framing, mut ebpf: Ebpf) -> Result<Self, LoaderError> {
        let maps = PolicyMaps::take(policy_maps::MapSource::Object(&mut ebpf))?;
        let (name, _) = program_names(framing);
        let program = xdp_program(&mut ebpf, name)?;
        program
            .load()
            .map_err(|source| named_program_error(name, source))?;
        Ok(Self { ebpf, maps })
    }

    /// The framing whose XDP program was loaded.
    fn framing(&mut self) -> Framing {
        let (l3, _) = program_names(Framing::Ip);
        match xdp_program(&mut self.ebpf, l3) {
            Ok(program) if program.fd().is_ok() => Framing::Ip,
            _ => Framing::Ethernet,
        }
    }

    pub fn program(&mut self) -> Result<&mut Xdp, LoaderError> {
        let (name, _) = program_names(self.framing());
        xdp_program(&mut self.ebpf, name)
    }

    /// The egress program, loaded on first use (tests run it with BPF_PROG_TEST_RUN).
    pub fn egress_program(&mut self) -> Result<&mut SchedClassifier, LoaderError> {
        let (_, name) = program_names(self.framing());
        let program = egress_program(&mut self.ebpf, name)?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|source| named_program_error(name, source))?;
        }
        Ok(program)
    }
}

fn named_program_error(name: &'static str, source: aya::programs::ProgramError) -> LoaderError {
    LoaderError::Program {
        name,
        source: Box::new(source),
    }
}

fn xdp_program<'e>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut Xdp, LoaderError> {
    let error = |source| named_program_error(name, source);
    let program = ebpf
        .program_mut(name)
        .ok_or(LoaderError::MissingProgram(name))?;
    program.try_into().map_err(error)
}

fn egress_program<'e>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<&'e mut SchedClassifier, LoaderError> {
    let error = |source| named_program_error(name, source);
    let program = ebpf
        .program_mut(name)
        .ok_or(LoaderError::MissingProgram(name))?;
    program.try_into().map_err(error)
}

/// Applies `compiled` to `iface`: swaps the policy of the filter already there, or
/// installs and pins a new one. On error nothing changes: a swap is only visible
/// after its final one-word flip, and an install is only visible once its staging
/// directory is renamed into place.
pub fn apply(
    writer: &WriterLock,
    root: &PinRoot,
    iface: &str,
    compiled: &Compiled,
    mut summary: PolicySummary,
) -> Result<ApplyOutcome, LoaderError> {
    // Refuses interfaces whose frames no program of ours reads (loopback, IP
    // tunnels...), naming the interface and its type.
    let (framing, facts) = link_type::framing_of(iface).map_err(|error| match error {
        link_type::LinkTypeError::Missing(iface) => LoaderError::NoSuchInterface(iface),
        other => LoaderError::from(other),
    })?;
    let ifindex = facts.ifindex;
    root.ensure_mounted()?;
    recover_interrupted_install(writer, root, iface)?;
    let dir = root.interface_dir(iface);
    if pins::present(&dir) {
        // Refused as a whole, not "reinstalled" below: see `pins::remove_dir`.
        pins::check_filter_dir(&dir)?;
        match pinned_link_state(&dir.join(LINK_PIN), LinkKind::Xdp) {
            Ok(state) if state.ifindex == ifindex && runs_program_for(&dir, &state, framing) => {
                let grace = Grace::Early(writer, &dir);
                let mode = attached_mode(&facts, &state);
                check_mode(iface, mode, summary.xdp_mode)?;
                if let Some(found) = takeover::foreign_layout(&dir) {
                    return takeover::take_over(
                        root, &dir, iface, ifindex, framing, mode, found, compiled, summary,
                    );
                }
                return swap_policy(&dir, iface, ifindex, mode, compiled, summary, grace);
            }
            Ok(state) if state.ifindex == ifindex => {
                // Loaded for another link type (a filter from before Airlock told
                // them apart, or a device recreated under the same index): it
                // misreads every frame, so it must not stay.
                tracing::warn!(
                    iface,
                    program = pinned_program_name(&dir),
                    framing = framing.name(),
                    "pinned filter reads the wrong frame layout for this interface; reinstalling"
                );
                pins::remove_dir(&dir)?;
            }
            // Not knowing is not "detached": reinstalling would tear down a live filter.
            Err(error) if error.is_permission_denied() => return Err(error),
            state => {
                // The interface was deleted (and maybe recreated) or the link was
                // removed behind our back: nothing is filtering, so start afresh.
                tracing::warn!(
                    iface,
                    ?state,
                    "pinned filter is no longer attached; reinstalling"
                );
                pins::remove_dir(&dir)?;
            }
        }
    }
    summary.serial = 1;
    install(root, iface, framing, compiled, summary)
}

/// Finishes what an install killed before renaming its staging directory into
/// place left for `iface` (the writer lock, held, says no install is running).
/// One killed after pinning its XDP link left a complete filter enforcing where no
/// command looks, and any later attach would be refused beside it: it is renamed
/// into place, as its apply would have done, replacing a directory whose link is
/// not attached (the interface has one XDP program). Any other is the remains of
/// an install that never filtered (its link died with it): removed, which also
/// detaches an egress link it pinned.
fn recover_interrupted_install(
    _writer: &WriterLock,
    root: &PinRoot,
    iface: &str,
) -> Result<(), LoaderError> {
    let dir = root.interface_dir(iface);
    for (_, staging) in root
        .staging_dirs()
        .into_iter()
        .filter(|(name, _)| name == iface)
    {
        pins::check_filter_dir(&staging)?;
        if takeover::shares_link(&staging, &dir) {
            takeover::recover(&staging, &dir)?;
            continue;
        }
        let state = match pinned_link_state(&staging.join(LINK_PIN), LinkKind::Xdp) {
            Ok(state) if state.ifindex != 0 => state,
            Err(error) if error.is_permission_denied() => return Err(error),
            _ => {
                tracing::warn!(iface, staging = %staging.display(), "removing what an interrupted install left");
                pins::remove_dir(&staging)?;
                continue;
            }
        };
        let here = link_type::framing_of(iface).is_ok_and(|(framing, facts)| {
            state.ifindex == facts.ifindex && runs_program_for(&staging, &state, framing)
        });
        if !here {
            // Attached, but not to the interface of that name seen from here (another
            // network namespace?): not ours to judge.
            continue;
        }
        tracing::warn!(iface, staging = %staging.display(), "an interrupted install left its filter enforcing: putting it in place");
        if pins::present(&dir) {
            pins::remove_dir(&dir)?;
        }
        fs::rename(&staging, &dir).map_err(|e| LoaderError::io("renaming into place", &dir, e))?;
    }
    Ok(())
}

/// [`recover_interrupted_install`] for every interface, unless an apply is running
/// (it does that itself): for `status`, which must not miss a filter enforcing.
pub fn recover_interrupted_installs(root: &PinRoot) -> Result<(), LoaderError> {
    let staged = root.staging_dirs();
    if staged.is_empty() {
        return Ok(());
    }
    let Some(writer) = WriterLock::try_acquire(root)? else {
        return Ok(());
    };
    let mut ifaces: Vec<String> = staged.into_iter().map(|(iface, _)| iface).collect();
    ifaces.dedup();
    for iface in ifaces {
        recover_interrupted_install(&writer, root, &iface)?;
    }
    Ok(())
}

/// Whether the pinned link runs the pinned program and that program reads
/// `framing`'s frames. Read through the program's pin: looking a program up by id
/// needs CAP_SYS_ADMIN, which the systemd unit does not grant.
fn runs_program_for(dir: &Path, state: &LinkState, framing: Framing) -> bool {
    // The kernel keeps the first 15 bytes of a program's name.
    let expected: String = program_names(framing).0.chars().take(15).collect();
    let Ok(path) = pinned_path(dir, PROGRAM_PIN) else {
        return false;
    };
    link::pinned_program(&path).is_ok_and(|(id, name)| id == state.program_id && name == expected)
}

/// The name of the program pinned in `dir`, for messages.
fn pinned_program_name(dir: &Path) -> String {
    pinned_path(dir, PROGRAM_PIN)
        .ok()
        .and_then(|path| link::pinned_program(&path).ok())
        .map(|(_, name)| name)
        .unwrap_or_default()
}

/// Why a pinned filter does not fit its interface as it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    #[error("no pinned link")]
    NoLink,
    #[error("link type not supported")]
    UnsupportedLinkType,
    #[error("link not attached to the interface (deleted and recreated?)")]
    Detached,
    #[error("the program attached reads the wrong frame layout for this link type")]
    WrongProgram,
}

/// Whether the filter pinned in `dir` is attached to `iface` as it is now and runs
/// the program for its link type (for the agent's drift check).
pub fn pinned_filter_fits(dir: &Path, iface: &str) -> Result<(), Misfit> {
    let state =
        pinned_link_state(&dir.join(LINK_PIN), LinkKind::Xdp).map_err(|_| Misfit::NoLink)?;
    let (framing, facts) = link_type::framing_of(iface).map_err(|_| Misfit::UnsupportedLinkType)?;
    if state.ifindex != facts.ifindex {
        return Err(Misfit::Detached);
    }
    if !runs_program_for(dir, &state, framing) {
        return Err(Misfit::WrongProgram);
    }
    Ok(())
}

/// The mode our program runs in on the interface, as the kernel says.
fn attached_mode(facts: &LinkFacts, state: &LinkState) -> AttachMode {
    if facts.xdp.generic == state.program_id {
        AttachMode::Skb
    } else {
        AttachMode::Driver
    }
}

/// An explicit mode the filter in place does not have is refused: a swap does not
/// re-attach.
fn check_mode(iface: &str, attached: AttachMode, requested: XdpMode) -> Result<(), LoaderError> {
    let fits = match requested {
        XdpMode::Auto => true,
        XdpMode::Native => attached == AttachMode::Driver,
        XdpMode::Generic => attached == AttachMode::Skb,
    };
    if fits {
        return Ok(());
    }
    Err(LoaderError::ModeMismatch {
        iface: iface.to_owned(),
        attached: attached.xdp_mode_name(),
        requested: requested.name(),
    })
}

/// Re-attaches the pinned egress program if its link is gone (someone detached it)
/// while the XDP program still filters: replies to the host's flows would otherwise
/// stop passing. The XDP link is left alone, so filtering never pauses.
fn ensure_egress(dir: &Path, iface: &str, ifindex: u32) -> Result<(), LoaderError> {
    let link_pin = dir.join(EGRESS_LINK_PIN);
    let attached =
        || pinned_link_state(&link_pin, LinkKind::TcxEgress).is_ok_and(|s| s.ifindex == ifindex);
    if !link::egress_supported() || attached() {
        return Ok(());
    }
    tracing::warn!(
        iface,
        "egress program not attached (return traffic would be dropped); re-attaching"
    );
    let mut program = SchedClassifier::from_pin(pinned_path(dir, EGRESS_PROGRAM_PIN)?)
        .map_err(|source| named_program_error(EGRESS_PROGRAM_NAME, source))?;
    let link = match link::attach_egress(&mut program, iface) {
        Ok(link) => link,
        // Someone else (a concurrent apply, the agent) repaired it meanwhile.
        Err(_) if attached() => return Ok(()),
        Err(error) => return Err(error),
    };
    // Pinned beside, then renamed over the stale pin: at no point is there no pin
    // for a live link, or a pin missing after a crash.
    let fresh = dir.join(format!("{EGRESS_LINK_PIN}_new"));
    let _ = fs::remove_file(&fresh);
    link.pin(&fresh).map_err(|source| LoaderError::Pin {
        path: fresh.clone(),
        source,
    })?;
    fs::rename(&fresh, &link_pin).map_err(|e| LoaderError::io("renaming", &link_pin, e))?;
    // Connections opened while it was detached: their SYN went unseen.
    flows::seed_from_socket_table(dir);
    Ok(())
}

fn swap_policy(
    dir: &Path,
    iface: &str,
    ifindex: u32,
    attach_mode: AttachMode,
    compiled: &Compiled,
    mut summary: PolicySummary,
    grace: Grace<'_>,
) -> Result<ApplyOutcome, LoaderError> {
    let mut maps = PolicyMaps::open_pinned(dir)?;
    check_layout(&maps, dir, iface)?;
    ensure_egress(dir, iface, ifindex)?;
    let previous = maps.active_summary()?;
    summary.serial = previous.map_or(1, |p| p.serial + 1);
    summary.attach_mode = Some(attach_mode);
    let generation = maps.apply_after(compiled, &summary, grace)?;
    Ok(ApplyOutcome {
        iface: iface.to_owned(),
        attached: false,
        attach_mode,
        generation,
        serial: summary.serial,
        took_over_layout: None,
    })
}

/// A pinned filter from an airlock with a different map layout must not be written
/// with ours: the bytes would mean something else to its program.
fn check_layout(maps: &PolicyMaps, dir: &Path, iface: &str) -> Result<(), LoaderError> {
    let found = maps.layout_version().map_err(|source| LoaderError::Map {
        name: MAP_META,
        source,
    })?;
    if found != 0 && found != LAYOUT_VERSION {
        return Err(LoaderError::LayoutMismatch {
            path: dir.to_owned(),
            iface: iface.to_owned(),
            found,
            expected: LAYOUT_VERSION,
        });
    }
    Ok(())
}

fn install(
    root: &PinRoot,
    iface: &str,
    framing: Framing,
    compiled: &Compiled,
    mut summary: PolicySummary,
) -> Result<ApplyOutcome, LoaderError> {
    let staging = root.staging_dir(iface);
    crate::trust::create_dir(&staging)?;
    // One left by a crashed apply of the same pid is checked like any other.
    pins::check_filter_dir(&staging)?;
    let result = install_staged(&staging, iface, framing, compiled, &mut summary);
    match result {
        Ok(outcome) => {
            crate::test_hook::stop_at("install-pinned");
            let dir = root.interface_dir(iface);
            if let Err(e) = fs::rename(&staging, &dir) {
                let _ = pins::remove_dir(&staging);
                return Err(LoaderError::io("renaming into place", &dir, e));
            }
            Ok(outcome)
        }
        Err(e) => {
            // Unpinning the staged link detaches the half-installed filter.
            if let Err(cleanup) = pins::remove_dir(&staging) {
                tracing::error!(error = %cleanup, "cleaning up after a failed install");
            }
            Err(e)
        }
    }
}

fn install_staged(
    staging: &Path,
    iface: &str,
    framing: Framing,
    compiled: &Compiled,
    summary: &mut PolicySummary,
) -> Result<ApplyOutcome, LoaderError> {
    let (xdp_name, egress_name) = program_names(framing);
    // Attach mode is only known after attaching; record the likely one and fix it up.
    summary.attach_mode = Some(AttachMode::Driver);
    let Staged {
        mut ebpf,
        mut maps,
        generation,
        egress,
    } = build_staged(staging, iface, framing, compiled, summary)?;
    if egress {
        attach_egress_staged(&mut ebpf, egress_name, staging, iface)?;
    }
    let program = xdp_program(&mut ebpf, xdp_name)?;
    let (link, attach_mode) = xdp_attach::attach(program, xdp_name, iface, summary.xdp_mode)?;
    if attach_mode != AttachMode::Driver {
        summary.attach_mode = Some(attach_mode);
        maps.rewrite_active_summary(summary)?;
    }
    crate::test_hook::stop_at("install-attached");
    let link_pin = staging.join(LINK_PIN);
    link.pin(&link_pin).map_err(|source| LoaderError::Pin {
        path: link_pin,
        source,
    })?;
    Ok(ApplyOutcome {
        iface: iface.to_owned(),
        attached: true,
        attach_mode,
        generation,
        serial: summary.serial,
        took_over_layout: None,
    })
}

/// A complete filter pinned in a staging directory, nothing of it attached.
struct Staged {
    ebpf: Ebpf,
    maps: PolicyMaps,
    generation: u32,
    /// Whether the egress program was loaded and pinned (the kernel has tcx).
    egress: bool,
}

/// Loads the object for `framing`, pins its maps and programs in `staging` and
/// puts `compiled` in force in its maps: everything of an install but attaching.
/// `summary.attach_mode` is taken as it is.
fn build_staged(
    staging: &Path,
    iface: &str,
    framing: Framing,
    compiled: &Compiled,
    summary: &PolicySummary,
) -> Result<Staged, LoaderError> {
    let (xdp_name, egress_name) = program_names(framing);
    let mut ebpf = load_object()?;
    for (name, map) in ebpf.pinnable_maps() {
        let path = staging.join(name);
        map.pin(&path)
            .map_err(|source| LoaderError::Pin { path, source })?;
    }
    let mut maps = PolicyMaps::take(policy_maps::MapSource::Object(&mut ebpf))?;
    let egress = link::egress_supported();
    if !egress {
        tracing::warn!(
            iface,
            "this kernel has no tcx (Linux 6.6+): filtering without return traffic; under `default: drop` replies to the host's own connections are dropped"
        );
    }
    // The kernel's verifier takes most of an install (a fifth of a second for
    // the XDP program on a small VM): the programs are verified side by side while
    // the policy goes into the maps, which need no program. It is in before the
    // program sees its first packet: nothing is attached until all are done.
    let (loaded, written) = crate::parallel::join(
        || load_programs(&mut ebpf, xdp_name, egress.then_some(egress_name)),
        || {
            maps.set_sample_rate(airlock_common::DEFAULT_SAMPLE_RATE)?;
            maps.apply(compiled, summary)
        },
    );
    loaded?;
    let generation = written?;
    let program = xdp_program(&mut ebpf, xdp_name)?;
    let program_pin = staging.join(PROGRAM_PIN);
    program
        .pin(&program_pin)
        .map_err(|source| LoaderError::Pin {
            path: program_pin,
            source,
        })?;
    if egress {
        let program = egress_program(&mut ebpf, egress_name)?;
        let egress_pin = staging.join(EGRESS_PROGRAM_PIN);
        program
            .pin(&egress_pin)
            .map_err(|source| LoaderError::Pin {
                path: egress_pin,
                source,
            })?;
    }
    Ok(Staged {
        ebpf,
        maps,
        generation,
        egress,
    })
}

/// Loads (has the kernel verify) the XDP program `xdp_name` and the egress program
/// `egress_name` if given, each on its own thread.
fn load_programs(
    ebpf: &mut Ebpf,
    xdp_name: &'static str,
    egress_name: Option<&'static str>,
) -> Result<(), LoaderError> {
    let (mut xdp, mut tc) = (None, None);
    for (name, program) in ebpf.programs_mut() {
        if name == xdp_name {
            xdp = Some(program);
        } else if Some(name) == egress_name {
            tc = Some(program);
        }
    }
    let program_error = |source| named_program_error(xdp_name, source);
    let xdp: &mut Xdp = xdp
        .ok_or(LoaderError::MissingProgram(xdp_name))?
        .try_into()
        .map_err(program_error)?;
    let Some(egress_name) = egress_name else {
        return xdp.load().map_err(program_error);
    };
    let egress_error = |source| named_program_error(egress_name, source);
    let tc: &mut SchedClassifier = tc
        .ok_or(LoaderError::MissingProgram(egress_name))?
        .try_into()
        .map_err(egress_error)?;
    let (xdp_loaded, tc_loaded) = crate::parallel::join(
        || xdp.load().map_err(program_error),
        || tc.load().map_err(egress_error),
    );
    xdp_loaded.and(tc_loaded)
}

/// Attaches the (loaded, pinned) egress program. Flows are recorded before the
/// XDP program starts dropping, so a connection the host opens while the install
/// runs still gets its replies.
fn attach_egress_staged(
    ebpf: &mut Ebpf,
    name: &'static str,
    staging: &Path,
    iface: &str,
) -> Result<(), LoaderError> {
    let egress = egress_program(ebpf, name)?;
    let link = link::attach_egress(egress, iface)?;
    let link_pin = staging.join(EGRESS_LINK_PIN);
    link.pin(&link_pin).map_err(|source| LoaderError::Pin {
        path: link_pin,
        source,
    })?;
    // Connections the host opened before there was an egress program to see
    // their SYN (before the first install, or while it was detached).
    flows::seed_from_socket_table(staging);
    Ok(())
}

/// Detaches and unpins the filter on `iface`, under the writer lock: a remove
/// interleaved with an apply or a rollback of the same filter could leave it half
/// unpinned, or a staged install put in place over it.
pub fn remove(_writer: &WriterLock, root: &PinRoot, iface: &str) -> Result<(), LoaderError> {
    root.check()?;
    let dir = root.interface_dir(iface);
    if !pins::present(&dir) {
        return Err(LoaderError::NotInstalled(iface.to_owned()));
    }
    pins::remove_dir(&dir)
}

/// Reverts one interface's successful apply (used when a later interface of the same
/// apply fails, so a policy is in force on all of them or on none): a fresh install
/// is removed; a swap is undone by flipping back to the untouched previous copy.
pub fn undo(
    writer: &WriterLock,
    root: &PinRoot,
    outcome: &ApplyOutcome,
) -> Result<(), LoaderError> {
    if outcome.attached {
        return remove(writer, root, &outcome.iface);
    }
    if let Some(found) = outcome.took_over_layout {
        // The old layout's filter is gone, and this one's other copy holds no
        // policy to flip back to: the new policy stays (enforcing, never nothing).
        tracing::error!(
            iface = outcome.iface,
            found,
            "cannot undo a takeover: the policy just applied stays in force here"
        );
        return Ok(());
    }
    let mut maps = PolicyMaps::open_pinned(&root.interface_dir(&outcome.iface))?;
    maps.set_active_generation(1 - outcome.generation)
}

/// An apply to several interfaces that failed on one of them (and was undone on the
/// ones already done). What it says stays in force is what was pinned before: a
/// failed first install leaves no filter, and must not claim a policy stays.
#[derive(Debug, thiserror::Error)]
#[error("applying to {} ({in_force}): {source}", in_force.iface)]
pub struct ApplyAllError {
    #[source]
    pub source: LoaderError,
    /// Where it failed, and what is in force on the apply's interfaces after it
    /// (boxed: an error stays small).
    pub in_force: Box<InForce>,
}

/// The interfaces of a failed apply, by what is in force on them.
#[derive(Debug)]
pub struct InForce {
    /// The interface the apply failed on.
    pub iface: String,
    /// Those that had a filter before it: theirs stays.
    pub kept: Vec<String>,
    /// Those that had none, and still have none.
    pub unfiltered: Vec<String>,
    /// Those where the apply took over a filter of another layout: that filter is
    /// gone, so the new policy stays in force there.
    pub taken_over: Vec<String>,
    /// Those where undoing the apply failed: what is in force there is unknown.
    pub undo_failed: Vec<String>,
}

impl std::fmt::Display for InForce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[String]| names.join(", ");
        let changed = !self.taken_over.is_empty() || !self.undo_failed.is_empty();
        if !changed && self.unfiltered.is_empty() {
            return write!(f, "the policy in force stays in force");
        }
        let mut parts = Vec::new();
        if !self.kept.is_empty() {
            parts.push(format!(
                "the policy in force on {} stays in force",
                list(&self.kept)
            ));
        }
        if !self.taken_over.is_empty() {
            parts.push(format!(
                "the new policy stays in force on {} (the filter it replaced, of another layout, cannot be restored)",
                list(&self.taken_over)
            ));
        }
        if !self.undo_failed.is_empty() {
            parts.push(format!(
                "undoing the apply failed on {} (see `airlock status`)",
                list(&self.undo_failed)
            ));
        }
        if !self.unfiltered.is_empty() {
            parts.push(format!(
                "no filter is in place on {}",
                list(&self.unfiltered)
            ));
        }
        if changed {
            write!(f, "{}", parts.join("; "))
        } else {
            write!(f, "nothing was applied; {}", parts.join(", "))
        }
    }
}

/// Applies to every interface or to none: if one fails, the ones already done are
/// undone (a fresh install removed, a swap flipped back).
pub fn apply_all(
    writer: &WriterLock,
    root: &PinRoot,
    ifaces: &[String],
    compiled: &Compiled,
    summary: &PolicySummary,
) -> Result<Vec<ApplyOutcome>, ApplyAllError> {
    let (kept, unfiltered): (Vec<String>, Vec<String>) = ifaces
        .iter()
        .cloned()
        .partition(|iface| pins::present(&root.interface_dir(iface)));
    let mut done = Vec::with_capacity(ifaces.len());
    for iface in ifaces {
        match apply(writer, root, iface, compiled, summary.clone()) {
            Ok(outcome) => done.push(outcome),
            Err(source) => {
                let (mut taken_over, mut undo_failed) = (Vec::new(), Vec::new());
                for outcome in done.iter().rev() {
                    if !outcome.attached && outcome.took_over_layout.is_some() {
                        taken_over.push(outcome.iface.clone());
                    }
                    if let Err(error) = undo(writer, root, outcome) {
                        tracing::error!(iface = outcome.iface, %error, "could not undo apply");
                        undo_failed.push(outcome.iface.clone());
                    }
                }
                let changed =
                    |name: &String| taken_over.contains(name) || undo_failed.contains(name);
                let kept = kept.into_iter().filter(|name| !changed(name)).collect();
                let unfiltered = unfiltered
                    .into_iter()
                    .filter(|name| !changed(name))
                    .collect();
                return Err(ApplyAllError {
                    source,
                    in_force: Box::new(InForce {
                        iface: iface.clone(),
                        kept,
                        unfiltered,
                        taken_over,
                        undo_failed,
                    }),
                });
            }
        }
    }
    Ok(done)
}

/// The map layout of the filter pinned in `dir` when it is not this airlock's
/// (its maps are then never written; `apply` takes it over).
pub fn foreign_layout(dir: &Path) -> Option<u32> {
    pins::check_filter_dir(dir).ok()?;
    takeover::foreign_layout(dir)
}

/// The id of the XDP program pinned in `dir` (for aya-log, which finds a program's
/// log ring by its id).
pub fn pinned_program_id(dir: &Path) -> std::io::Result<u32> {
    let path = pinned_path(dir, PROGRAM_PIN).map_err(std::io::Error::other)?;
    link::pinned_program(&path).map(|(id, _)| id)
}

/// The maps of an object that are pinned with its filter, by the name they are
/// pinned under: all but `.rodata` (aya-log's level: the loaded program holds its
/// own, frozen at load), the global data the program reads without a lookup under
/// its `airlock_common::GLOBAL_DATA_MAPS` name (bpffs refuses names with a dot).
pub trait PinnableMaps {
    fn pinnable_maps(&self) -> impl Iterator<Item = (&str, &aya::maps::Map)>;
}

impl PinnableMaps for Ebpf {
    fn pinnable_maps(&self) -> impl Iterator<Item = (&str, &aya::maps::Map)> {
        self.maps()
            .filter_map(|(name, map)| Some((airlock_common::pin_name(name)?, map)))
    }
}

#[cfg(test)]
mod in_force_tests {
    use super::InForce;

    fn in_force(kept: &[&str], unfiltered: &[&str], taken_over: &[&str]) -> String {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        InForce {
            iface: "eth9".into(),
            kept: names(kept),
            unfiltered: names(unfiltered),
            taken_over: names(taken_over),
            undo_failed: Vec::new(),
        }
        .to_string()
    }

    /// What a failed apply says is in force names each interface by what it runs.
    #[test]
    fn a_failed_apply_says_what_each_interface_runs() {
        assert_eq!(
            in_force(&["eth0"], &[], &[]),
            "the policy in force stays in force"
        );
        assert_eq!(
            in_force(&[], &["eth1"], &[]),
            "nothing was applied; no filter is in place on eth1"
        );
        // A takeover of another layout's filter cannot be undone: the new policy
        // stays there, and the message must not claim otherwise.
        assert_eq!(
            in_force(&["eth0"], &["eth1"], &["eth2"]),
            "the policy in force on eth0 stays in force; the new policy stays in force on eth2 (the filter it replaced, of another layout, cannot be restored); no filter is in place on eth1"
        );
    }
}
