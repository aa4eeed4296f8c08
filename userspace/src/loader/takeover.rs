//! Taking over a filter pinned by an airlock with another map layout: the binary
//! was upgraded (a package, a DaemonSet rolling update) or downgraded while its
//! filter stayed pinned. That filter's maps mean something else to this binary, so
//! they are never written; a complete new filter is built beside it and the kernel
//! runs it in the old one's place:
//!
//! 1. staging: new maps pinned, the policy written into them, both programs
//!    verified and pinned (an install that attaches nothing);
//! 2. the old filter's XDP link, then its egress link, pinned a second time in
//!    the staging directory (the same kernel links, now in both directories);
//! 3. the egress link switched to the new egress program (`BPF_LINK_UPDATE`), and
//!    the new flow table seeded with the host's open TCP connections, so the new
//!    XDP program finds the flows it must let replies in for;
//! 4. the XDP link switched to the new program, only if it still runs the old one
//!    (`BPF_F_REPLACE`): one pointer swap in the kernel, so every packet meets one
//!    complete filter or the other, never none;
//! 5. the two directories exchanged in one rename (`RENAME_EXCHANGE`);
//! 6. the old one retired: its link pins unlinked (never detached: the links are
//!    the new filter's now), then the rest unpinned.
//!
//! A failure before 4 points the egress link back and removes the staging
//! directory: the old filter never stopped enforcing. An airlock killed anywhere
//! leaves a staging directory that shares the interface directory's XDP link; the
//! next apply, `status` or agent reconcile finishes or undoes it by which
//! directory's program that link runs ([`recover`]).
//!
//! What does not carry over (the old maps cannot be read): counters start at zero,
//! the flow table holds only the seeded TCP connections (replies of the host's
//! other flows pass again once the host sends in them), and the sample rate is the
//! default until the agent sets its own. A takeover cannot be put on probation
//! (`--confirm`): there is no earlier policy of this layout to roll back to.

use std::{io, path::Path};

use airlock_common::{LAYOUT_VERSION, MAP_ACTIVE_GEN, MAP_META, PolicyMeta};
use aya::maps::{Array, MapData};
use serde::Deserialize;

use super::{
    ApplyOutcome, AttachMode, EGRESS_LINK_PIN, EGRESS_PROGRAM_PIN, LINK_PIN, LinkKind, LoaderError,
    PROGRAM_PIN, PinRoot, PolicySummary, build_staged, ensure_egress, flows, link, pins,
};
use crate::{compile::Compiled, link_type::Framing, loader::meta::PendingConfirm};

/// The layout of the filter pinned in `dir` if it is another one than ours (0, a
/// filter never written, is no layout). Read from `ACTIVE_GEN` and the envelope
/// of `META` (`PolicyMeta`'s version word), which every layout keeps.
pub(super) fn foreign_layout(dir: &Path) -> Option<u32> {
    let (found, _) = pinned_meta(dir)?;
    (found != 0 && found != LAYOUT_VERSION).then_some(found)
}

/// The active `META` slot of the filter in `dir`: its layout and its JSON.
fn pinned_meta(dir: &Path) -> Option<(u32, Vec<u8>)> {
    // Read-only: it reads, and works on a read-only bpffs (`status`).
    let open = |name| {
        let path = pins::entry(dir, name).ok()?;
        pins::open_map(&path, true).ok()
    };
    let active: Array<MapData, u32> =
        Array::try_from(aya::maps::Map::Array(open(MAP_ACTIVE_GEN)?)).ok()?;
    let meta: Array<MapData, PolicyMeta> =
        Array::try_from(aya::maps::Map::Array(open(MAP_META)?)).ok()?;
    let generation = active.get(&0, 0).ok()? & 1;
    let slot = meta.get(&generation, 0).ok()?;
    let len = (slot.len as usize).min(slot.bytes.len());
    Some((slot.layout_version, slot.bytes[..len].to_vec()))
}

/// What this binary can tell of another layout's summary: the JSON envelope has
/// kept these fields since the first layout; anything else is ignored.
#[derive(Debug, Default, Deserialize)]
struct ForeignSummary {
    #[serde(default)]
    serial: u64,
    #[serde(default)]
    pending_confirm: Option<PendingConfirm>,
}

fn foreign_summary(dir: &Path) -> ForeignSummary {
    pinned_meta(dir)
        .and_then(|(_, json)| serde_json::from_slice(&json).ok())
        .unwrap_or_default()
}

/// Replaces the filter pinned in `dir` (layout `found`, attached to `iface` in
/// `attach_mode`, reading `framing`'s frames) by one of this binary's layout
/// holding `compiled`, without a moment unfiltered; or refuses, leaving it
/// enforcing. The caller holds the writer lock.
#[allow(clippy::too_many_arguments)]
pub(super) fn take_over(
    root: &PinRoot,
    dir: &Path,
    iface: &str,
    ifindex: u32,
    framing: Framing,
    attach_mode: AttachMode,
    found: u32,
    compiled: &Compiled,
    mut summary: PolicySummary,
) -> Result<ApplyOutcome, LoaderError> {
    let refuse = |reason: String| LoaderError::TakeoverRefused {
        iface: iface.to_owned(),
        found,
        expected: LAYOUT_VERSION,
        reason,
    };
    if summary.pending_confirm.is_some() {
        return Err(refuse(
            "a takeover cannot be put on probation (--confirm): there is no policy of this layout \
             to roll back to; apply the policy without --confirm first, then apply --confirm"
                .to_owned(),
        ));
    }
    let previous = foreign_summary(dir);
    let now = crate::safety::confirm::now_unix();
    if let Some(pending) = previous.pending_confirm
        && pending.deadline_unix > now
    {
        return Err(refuse(format!(
            "a confirmation that airlock started is pending ({}s left): confirm it with that \
             airlock or let its watchdog roll it back, then apply again",
            pending.deadline_unix - now
        )));
    }
    tracing::warn!(
        iface,
        found,
        ours = LAYOUT_VERSION,
        "the filter pinned here has another map layout; taking it over (it keeps enforcing until the new one replaces it)"
    );
    summary.serial = previous.serial + 1;
    summary.attach_mode = Some(attach_mode);
    let staging = root.staging_dir(iface);
    crate::trust::create_dir(&staging)?;
    pins::check_filter_dir(&staging)?;
    let staged = match build_staged(&staging, iface, framing, compiled, &summary) {
        Ok(staged) => staged,
        Err(error) => {
            // Nothing of it is attached: removing it detaches nothing.
            if let Err(cleanup) = pins::remove_dir(&staging) {
                tracing::error!(error = %cleanup, "cleaning up after a failed takeover");
            }
            return Err(error);
        }
    };
    crate::test_hook::stop_at("takeover-staged");
    let io = |what: &'static str| {
        move |source: io::Error| LoaderError::Takeover {
            iface: iface.to_owned(),
            found,
            expected: LAYOUT_VERSION,
            what,
            source,
        }
    };
    if let Err(error) = switch(dir, &staging, iface, ifindex).map_err(|(what, e)| io(what)(e)) {
        if let Err(cleanup) = keep(dir, &staging) {
            tracing::error!(error = %cleanup, "undoing a failed takeover");
        }
        return Err(error);
    }
    crate::test_hook::stop_at("takeover-switched");
    put_in_place(&staging, dir).map_err(|(what, e)| io(what)(e))?;
    // An old filter without an egress link (detached, or a kernel without tcx
    // then): attach the new one's now.
    ensure_egress(dir, iface, ifindex)?;
    Ok(ApplyOutcome {
        iface: iface.to_owned(),
        attached: false,
        attach_mode,
        generation: staged.generation,
        serial: summary.serial,
        took_over_layout: Some(found),
    })
}

type Step = (&'static str, io::Error);

fn step(what: &'static str) -> impl FnOnce(io::Error) -> Step {
    move |error| (what, error)
}

/// Steps 2-4: the old filter's links made to run the staged programs.
fn switch(dir: &Path, staging: &Path, iface: &str, ifindex: u32) -> Result<(), Step> {
    link::pin_again(&dir.join(LINK_PIN), &staging.join(LINK_PIN))
        .map_err(step("pinning the XDP link in the staging directory"))?;
    // An egress link someone detached is not taken along: the new filter attaches
    // its own afterwards (`ensure_egress`).
    let egress = pins::present(&staging.join(EGRESS_PROGRAM_PIN))
        && pins::present(&dir.join(EGRESS_PROGRAM_PIN))
        && link::pinned_link_state(&dir.join(EGRESS_LINK_PIN), LinkKind::TcxEgress)
            .is_ok_and(|state| state.ifindex == ifindex);
    if egress {
        link::pin_again(&dir.join(EGRESS_LINK_PIN), &staging.join(EGRESS_LINK_PIN))
            .map_err(step("pinning the egress link in the staging directory"))?;
        link::update_pinned(
            &staging.join(EGRESS_LINK_PIN),
            &staging.join(EGRESS_PROGRAM_PIN),
            Some(&dir.join(EGRESS_PROGRAM_PIN)),
        )
        .map_err(step("switching the egress link to the new program"))?;
        crate::test_hook::stop_at("takeover-egress");
    }
    flows::seed_from_socket_table(staging);
    link::update_pinned(
        &staging.join(LINK_PIN),
        &staging.join(PROGRAM_PIN),
        Some(&dir.join(PROGRAM_PIN)),
    )
    .map_err(|error| {
        let what = if error.raw_os_error() == Some(libc::EPERM) {
            "the XDP link no longer runs the program pinned with it (changed by someone else?)"
        } else {
            "switching the XDP link to the new program"
        };
        (what, error)
    })?;
    tracing::info!(
        iface,
        "the XDP link runs the new program: the old filter is out of the datapath"
    );
    Ok(())
}

/// Steps 5-6: `staging`, whose program the shared link runs, takes `dir`'s name,
/// and the filter that had it is retired.
fn put_in_place(staging: &Path, dir: &Path) -> Result<(), Step> {
    match nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        staging,
        nix::fcntl::AT_FDCWD,
        dir,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    ) {
        Ok(()) => {
            crate::test_hook::stop_at("takeover-exchanged");
            // `staging` now holds the old filter.
            retire(staging).map_err(step("retiring the old filter"))
        }
        Err(error) => {
            tracing::debug!(%error, "exchanging directories; retiring the old one first");
            retire(dir).map_err(step("retiring the old filter"))?;
            std::fs::rename(staging, dir).map_err(step("renaming the new filter into place"))
        }
    }
}

/// Undoes [`switch`] before its XDP step took: the egress link back on `dir`'s
/// program, `staging` retired.
fn keep(dir: &Path, staging: &Path) -> io::Result<()> {
    point_egress(dir, staging)?;
    retire(staging)
}

/// Makes the egress link the two directories share (if they do) run `to`'s egress
/// program.
fn point_egress(to: &Path, other: &Path) -> io::Result<()> {
    let program = to.join(EGRESS_PROGRAM_PIN);
    let link = [to, other]
        .map(|d| d.join(EGRESS_LINK_PIN))
        .into_iter()
        .find(|p| pins::present(p));
    match link {
        Some(link) if pins::present(&program) => link::update_pinned(&link, &program, None),
        _ => Ok(()),
    }
}

/// Unpins everything in `dir` without detaching its links, which the other
/// directory holds too. The egress link's pin goes first: a directory left with
/// only its XDP link is still recognised as sharing it ([`shares_link`]), and one
/// with neither is removed like any staging directory, with nothing to detach.
fn retire(dir: &Path) -> io::Result<()> {
    for name in [EGRESS_LINK_PIN, LINK_PIN] {
        let path = dir.join(name);
        if pins::present(&path) {
            std::fs::remove_file(&path)?;
        }
    }
    pins::remove_dir(dir).map_err(io::Error::other)
}

/// Whether the staging directory `staging` holds the same XDP link as `dir`: a
/// takeover was under way there when its airlock died.
pub(super) fn shares_link(staging: &Path, dir: &Path) -> bool {
    let id = |d: &Path| {
        link::pinned_link_state(&d.join(LINK_PIN), LinkKind::Xdp)
            .ok()
            .map(|state| state.link_id)
    };
    pins::present(&dir.join(LINK_PIN)) && id(staging).is_some() && id(staging) == id(dir)
}

/// Finishes or undoes the takeover an airlock died in (`staging` shares `dir`'s
/// link; the caller holds the writer lock): the directory whose program the link
/// runs is the filter in force, and ends up at `dir`; the other is retired.
pub(super) fn recover(staging: &Path, dir: &Path) -> Result<(), LoaderError> {
    let state = link::pinned_link_state(&dir.join(LINK_PIN), LinkKind::Xdp)?;
    let runs = |d: &Path| {
        pins::pinned_path(d, PROGRAM_PIN)
            .ok()
            .and_then(|path| link::pinned_program(&path).ok())
            .is_some_and(|(id, _)| id == state.program_id)
    };
    let io = |what: &'static str| move |e: io::Error| LoaderError::io(what, staging, e);
    if runs(staging) {
        tracing::warn!(staging = %staging.display(), "an interrupted takeover had switched to its filter: finishing it");
        point_egress(staging, dir).map_err(io("switching the egress link"))?;
        put_in_place(staging, dir).map_err(|(what, e)| LoaderError::io(what, staging, e))
    } else if runs(dir) {
        tracing::warn!(staging = %staging.display(), "removing what an interrupted takeover left (the filter in place kept enforcing)");
        keep(dir, staging).map_err(io("removing"))
    } else {
        Err(LoaderError::io(
            "recovering an interrupted takeover",
            staging,
            io::Error::other(
                "the shared XDP link runs neither directory's program: left for an operator",
            ),
        ))
    }
}
