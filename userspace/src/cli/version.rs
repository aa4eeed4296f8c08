//! `airlock -V` / `--version`: the release and the commit it was built from; the
//! long form adds what this kernel offers Airlock. Asked without privileges, so
//! from kernel version and files, not by loading anything.

use std::path::Path;

use airlock::loader;
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

/// `airlock -V`. The commit is set by `cargo xtask build`/`install`/`test` (`git
/// rev-parse`, `-dirty` with uncommitted changes); a plain `cargo build` has none.
pub fn short() -> String {
    let commit = option_env!("AIRLOCK_COMMIT").unwrap_or("unknown: built without cargo xtask");
    format!("{} (commit {commit})", env!("CARGO_PKG_VERSION"))
}

/// `airlock --version`.
pub fn long() -> String {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let at_least = |major, minor| {
        aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(major, minor, 0))
    };
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let bpffs = statfs("/sys/fs/bpf").is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    format!(
        "{short}\n\
         kernel {release}:\n  \
         BPF links for XDP (Linux 5.9+, needed): {links}\n  \
         tcx (Linux 6.6+, return traffic under `default: drop`): {tcx}\n  \
         BTF at /sys/kernel/btf/vmlinux: {btf}\n  \
         bpffs mounted at /sys/fs/bpf: {bpffs}\n  \
         native XDP: per driver, known only by attaching; `airlock status` shows each filter's mode (driver = native, skb = generic)",
        short = short(),
        links = yes_no(at_least(5, 9)),
        tcx = yes_no(loader::egress_supported()),
        btf = yes_no(btf),
        bpffs = if bpffs {
            "yes"
        } else {
            "no (apply mounts one at the pin root)"
        },
    )
}
