//! Whether another local user could change what Airlock finds in a directory it
//! keeps its state in (the pin root, an interface's pin directory, the agent's
//! state directory). A user who can write there could plant a symlink (`remove`
//! would detach whatever filter it points to), rename a filter away (`remove --all`
//! would no longer see it), or create and hold a lock that an apply or a rollback
//! waits on. So each such directory must be root's alone, and so must every
//! directory on the way to it; what Airlock makes there it makes 0700 (or 0600),
//! whatever the umask.

use std::{
    fs::{self, File, Metadata, OpenOptions, Permissions},
    io,
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::{Component, Path, PathBuf},
};

/// The mode of every directory Airlock makes for its state.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file (lock, socket) Airlock makes for its state.
pub const FILE_MODE: u32 = 0o600;

/// The kernel's limit on symlinks followed in one lookup (`ELOOP` beyond it).
const MAX_LINKS: u32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("refusing {path}: it {why}; {fix}")]
    Untrusted {
        path: PathBuf,
        why: String,
        fix: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TrustError {
    let path = path.to_owned();
    move |source| TrustError::Io { op, path, source }
}

fn untrusted(path: &Path, why: impl Into<String>, fix: impl Into<String>) -> TrustError {
    TrustError::Untrusted {
        path: path.to_owned(),
        why: why.into(),
        fix: fix.into(),
    }
}

/// Root, or the user this process runs as.
fn ours(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn lstat(path: &Path) -> Result<Metadata, TrustError> {
    fs::symlink_metadata(path).map_err(io_error("checking", path))
}

/// Who besides the owner may write, for a message.
fn writers(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and every user",
        (true, false) => "its group",
        _ => "every user",
    }
}

/// `meta` (of `path`, not followed) is root's alone: not a symlink, owned by root
/// (or us), writable by no one else.
fn check_owned(path: &Path, meta: &Metadata) -> Result<(), TrustError> {
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).unwrap_or_default();
        return Err(untrusted(
            path,
            format!("is a symbolic link (to {})", target.display()),
            "Airlock never follows links where it keeps its state: give the real \
             directory instead, or remove the link (as root) if you did not make it",
        ));
    }
    if !ours(meta.uid()) {
        return Err(untrusted(
            path,
            format!(
                "is owned by uid {}, not root, and that user could plant or rename what \
                 Airlock trusts in it",
                meta.uid()
            ),
            format!(
                "if you did not make it, look at what it holds, remove it as root \
                 (`rm -r {}`; `umount` it first if it is a mount) and run again: Airlock \
                 makes it again, root's alone",
                path.display()
            ),
        ));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 {
        return Err(untrusted(
            path,
            format!(
                "is writable by {} (mode {:04o}), who could plant or rename what Airlock \
                 trusts in it",
                writers(mode),
                mode & 0o7777
            ),
            format!(
                "look at what it holds, then `chmod 0700 {}` (a bpffs mount: mount it with \
                 `-o mode=0700`)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// `path` is a directory only root can change: not a symlink, owned by root (or
/// us), writable by no one else. Its parents are [`check_parents`]' business.
pub fn check_dir(path: &Path) -> Result<(), TrustError> {
    let meta = lstat(path)?;
    check_owned(path, &meta)?;
    if !meta.is_dir() {
        return Err(untrusted(
            path,
            "is not a directory",
            "remove it (as root) or choose another path",
        ));
    }
    Ok(())
}

/// `meta` is of an entry in a directory [`check_dir`] accepted, that Airlock is
/// about to open or remove: a plain file (a pinned object on bpffs) that is root's
/// alone, never a symlink to something elsewhere.
pub fn check_entry(path: &Path, meta: &Metadata) -> Result<(), TrustError> {
    check_owned(path, meta)?;
    if !meta.is_file() {
        return Err(untrusted(
            path,
            "is not a pinned object",
            "Airlock did not put it there: look at it and remove it (as root)",
        ));
    }
    Ok(())
}

/// [`check_entry`] on `path` if it exists (not followed); what does not exist is
/// left for the caller to report.
pub fn check_entry_at(path: &Path) -> Result<(), TrustError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => check_entry(path, &meta),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("checking", path)(error)),
    }
}

/// Every directory on the way to `path` (not `path` itself) is root's (or ours)
/// and writable by no one else, unless it has the sticky bit (/tmp, a bare bpffs
/// mount at /sys/fs/bpf): there others cannot rename or remove what root made.
/// Symlinks on the way are followed as the kernel follows them, and must be root's
/// too. So nobody but root can swap `path` for something of their own.
pub fn check_parents(path: &Path) -> Result<(), TrustError> {
    let path = std::path::absolute(path).map_err(io_error("resolving", path))?;
    match path.parent() {
        Some(parent) => check_dirs_to(parent, 0),
        None => Ok(()),
    }
}

/// `dir` and every directory on the way to it, as [`check_parents`] describes.
fn check_dirs_to(dir: &Path, links: u32) -> Result<(), TrustError> {
    let mut at = PathBuf::from("/");
    check_parent(&at, &lstat(&at)?)?;
    for component in dir.components() {
        match component {
            Component::Normal(name) => at.push(name),
            Component::ParentDir => {
                at.pop();
                continue;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        }
        let meta = lstat(&at)?;
        if !meta.file_type().is_symlink() {
            check_parent(&at, &meta)?;
            continue;
        }
        if links >= MAX_LINKS {
            return Err(io_error("resolving", dir)(io::Error::from_raw_os_error(
                libc::ELOOP,
            )));
        }
        if !ours(meta.uid()) {
            return Err(untrusted(
                &at,
                format!(
                    "is a symbolic link owned by uid {}, who could point it elsewhere",
                    meta.uid()
                ),
                "use a path whose every directory and link is root's",
            ));
        }
        let target = fs::read_link(&at).map_err(io_error("reading", &at))?;
        let base = at
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_owned);
        check_dirs_to(&base.join(target), links + 1)?;
        at = fs::canonicalize(&at).map_err(io_error("resolving", &at))?;
    }
    Ok(())
}

fn check_parent(path: &Path, meta: &Metadata) -> Result<(), TrustError> {
    if !meta.is_dir() {
        return Err(untrusted(path, "is not a directory", "choose another path"));
    }
    if !ours(meta.uid()) {
        return Err(untrusted(
            path,
            format!(
                "is owned by uid {}, who could swap what Airlock keeps below it for \
                 something of their own",
                meta.uid()
            ),
            "use a path whose every directory is root's",
        ));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(untrusted(
            path,
            format!(
                "is writable by {} without the sticky bit (mode {:04o}), who could swap \
                 what Airlock keeps below it for something of their own",
                writers(mode),
                mode & 0o7777
            ),
            format!(
                "`chmod go-w {}` (or `chmod +t`), or use another path",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// `path` and the directories leading to it: [`check_dir`] and [`check_parents`].
pub fn check_dir_and_parents(path: &Path) -> Result<(), TrustError> {
    check_parents(path)?;
    check_dir(path)
}

/// Opens the directory `path` without following a symlink at its end.
pub fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Makes the directory `path`, mode 0700 whatever the umask, once its parents
/// pass [`check_parents`] (so nobody can swap it for something else while it is
/// made). One that exists is left as it is, for the caller to check.
pub fn create_dir(path: &Path) -> Result<(), TrustError> {
    check_parents(path)?;
    match fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(error) => return Err(io_error("creating", path)(error)),
    }
    // The umask can only have taken bits away; make it exactly 0700.
    open_dir(path)
        .and_then(|dir| dir.set_permissions(Permissions::from_mode(DIR_MODE)))
        .map_err(io_error("setting the mode of", path))
}

/// [`create_dir`] for `path` and each missing directory on the way to it.
pub fn create_dir_all(path: &Path) -> Result<(), TrustError> {
    match fs::symlink_metadata(path) {
        Ok(_) => return Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("checking", path)(error)),
    }
    if let Some(parent) = path.parent() {
        create_dir_all(parent)?;
    }
    create_dir(path)
}

/// Opens (making it if need be) a directory to `flock`, in a directory the caller
/// has checked: 0700 and root's, so that no other user can open it, and so none
/// can hold its lock. (bpffs, where the pin root is, holds no regular files.)
pub fn open_lock_dir(path: &Path) -> Result<File, TrustError> {
    create_dir(path)?;
    // For the message; opened without following a link in any case.
    check_dir(path)?;
    let dir = open_dir(path).map_err(io_error("opening", path))?;
    let meta = dir.metadata().map_err(io_error("checking", path))?;
    check_owned(path, &meta)?;
    if meta.mode() & 0o077 != 0 {
        return Err(untrusted(
            path,
            format!(
                "can be opened by other users (mode {:04o}), who could hold its lock",
                meta.mode() & 0o7777
            ),
            format!(
                "remove it as root (`rmdir {}`): Airlock makes it again, 0700",
                path.display()
            ),
        ));
    }
    Ok(dir)
}

/// Opens (making it if need be) the regular file `path` to read, write and lock, in
/// a directory the caller has checked: never through a symlink, root's (or ours),
/// 0600 whatever the umask. One left readable by others (by an older airlock) is
/// made 0600; one writable by others, or another user's, is refused.
pub fn open_private_file(path: &Path) -> Result<File, TrustError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_error("opening", path))?;
    let meta = file.metadata().map_err(io_error("checking", path))?;
    check_owned(path, &meta)?;
    if !meta.is_file() {
        return Err(untrusted(
            path,
            "is not a regular file",
            "remove it (as root) and run again",
        ));
    }
    if meta.mode() & 0o7777 != FILE_MODE {
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(io_error("setting the mode of", path))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn is_untrusted(result: Result<impl Sized, TrustError>) -> bool {
        matches!(result, Err(TrustError::Untrusted { .. }))
    }

    /// The process-wide umask, set for the length of `f`. Tests in one binary
    /// share it, so every test that depends on it goes through here.
    fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
        static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _held = UMASK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
        let value = f();
        nix::sys::stat::umask(old);
        value
    }

    #[test]
    fn what_is_made_is_0700_or_0600_whatever_the_umask() {
        let scratch = tempfile::tempdir().unwrap();
        for mask in [0o000, 0o022, 0o077] {
            let dir = scratch.path().join(format!("m{mask:o}/a/b"));
            with_umask(mask, || create_dir_all(&dir)).unwrap();
            for made in [dir.as_path(), dir.parent().unwrap()] {
                assert_eq!(
                    mode(made),
                    DIR_MODE,
                    "{} under umask {mask:03o}",
                    made.display()
                );
            }
            let lock = with_umask(mask, || open_lock_dir(&dir.join("lock"))).unwrap();
            drop(lock);
            assert_eq!(mode(&dir.join("lock")), DIR_MODE);
            let file = dir.join("file");
            with_umask(mask, || open_private_file(&file)).unwrap();
            assert_eq!(mode(&file), FILE_MODE, "umask {mask:03o}");
            check_dir_and_parents(&dir).unwrap();
        }
    }

    #[test]
    fn links_and_loose_modes_are_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let real = scratch.path().join("real");
        create_dir(&real).unwrap();
        let link = scratch.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(is_untrusted(check_dir(&link)));
        assert!(is_untrusted(open_lock_dir(&link)));
        // Through a root-owned link on the way: fine.
        let below = link.join("below");
        create_dir(&below).unwrap();
        check_dir_and_parents(&below).unwrap();

        let file_link = real.join("file-link");
        std::os::unix::fs::symlink("/etc/hostname", &file_link).unwrap();
        assert!(open_private_file(&file_link).is_err(), "O_NOFOLLOW");
        assert!(is_untrusted(check_entry_at(&file_link)));

        fs::set_permissions(&real, Permissions::from_mode(0o777)).unwrap();
        assert!(is_untrusted(check_dir(&real)));
        assert!(is_untrusted(check_parents(&below)), "not sticky");
        fs::set_permissions(&real, Permissions::from_mode(0o1777)).unwrap();
        check_parents(&below).unwrap();
        fs::set_permissions(&real, Permissions::from_mode(0o755)).unwrap();
        check_dir(&real).unwrap();

        let lock = real.join("lock");
        create_dir(&lock).unwrap();
        fs::set_permissions(&lock, Permissions::from_mode(0o755)).unwrap();
        assert!(is_untrusted(open_lock_dir(&lock)), "others could open it");

        let loose = real.join("loose");
        fs::write(&loose, "").unwrap();
        fs::set_permissions(&loose, Permissions::from_mode(0o644)).unwrap();
        open_private_file(&loose).unwrap();
        assert_eq!(mode(&loose), FILE_MODE, "tightened");
        fs::set_permissions(&loose, Permissions::from_mode(0o666)).unwrap();
        assert!(is_untrusted(open_private_file(&loose)));
    }
}
