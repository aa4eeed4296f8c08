//! Reading the file behind a `file:` import, defensively: a policy can name any
//! path, and the agent reads it unattended. Only a regular file is opened (a FIFO
//! would block, a device could stream forever or do something on open), the size
//! limit holds while reading (procfs files claim 0 bytes; a file can grow), and a
//! world-writable file is refused (anyone could then choose who reaches the host).
//!
//! Symlinks are followed: Kubernetes mounts ConfigMaps and Secrets as symlinks into
//! a `..data` directory, and what is checked is the file finally opened. An import
//! is therefore as trusted as whoever can write it or any directory on its path,
//! like the policy itself.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

/// The default `max_size` of an import: generous (the largest provider lists are a
/// few MiB), but bounded.
pub(crate) const DEFAULT_MAX_SIZE: u64 = 256 << 20;

/// Why an import could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(std::io::Error),
    /// What it is instead: "a FIFO", "a directory", ...
    NotRegular(&'static str),
    WorldWritable(u32),
    /// `size`: what the file claimed, when it claimed more than the limit; `None`
    /// when it only turned out larger while being read.
    TooLarge {
        size: Option<u64>,
        limit: u64,
    },
    /// The first byte that is not UTF-8, 1-based line and column.
    NotText {
        line: usize,
        column: usize,
    },
}

impl ReadError {
    /// A message naming `path` (the resolved path of the import).
    pub(crate) fn message(&self, path: &Path) -> String {
        let path = path.display();
        match self {
            ReadError::Io(e) => format!("cannot read imported file {path}: {e}"),
            ReadError::NotRegular(what) => {
                format!("imported file {path} is {what}, not a regular file")
            }
            ReadError::WorldWritable(mode) => format!(
                "imported file {path} is writable by every user (mode {:04o})",
                mode & 0o7777
            ),
            ReadError::TooLarge {
                size: Some(size),
                limit,
            } => format!(
                "imported file {path} is {}, more than max_size ({})",
                size_text(*size),
                size_text(*limit)
            ),
            ReadError::TooLarge { size: None, limit } => format!(
                "imported file {path} holds more than max_size ({}) (it grew while being read, or its size is not known in advance)",
                size_text(*limit)
            ),
            ReadError::NotText { .. } => {
                "not a text file: this byte is not UTF-8 (is the import a range list?)".to_string()
            }
        }
    }

    pub(crate) fn hint(&self) -> Option<String> {
        Some(
            match self {
                ReadError::Io(_) => "the path is relative to the policy file's directory",
                ReadError::NotRegular(_) => {
                    "an import must be a regular file (symlinks to one are followed)"
                }
                ReadError::WorldWritable(_) => {
                    "any local user could choose who reaches this host: chmod o-w the file"
                }
                ReadError::TooLarge { .. } => {
                    "raise the set's max_size (e.g. max_size: 1GiB) if the file is meant to be this large"
                }
                ReadError::NotText { .. } => {
                    "an import is a text file with one CIDR or address per line"
                }
            }
            .to_string(),
        )
    }
}

/// The regular file at `path`, opened for reading, and what fstat says of it.
/// Anything else is refused ([`ReadError::NotRegular`]) without blocking: a FIFO
/// with no writer, a device that never ends.
pub(crate) fn open_regular(path: &Path) -> Result<(File, Metadata), ReadError> {
    // Looked at before opening: opening a device can itself act (a tape rewinds, a
    // watchdog arms).
    check_kind(&std::fs::metadata(path).map_err(ReadError::Io)?)?;
    // O_NONBLOCK: if a FIFO took the file's place since, opening it does not wait for
    // a writer (and fstat below refuses it). O_NOCTTY: nor does a terminal become ours.
    // Neither changes anything for a regular file.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ReadError::Io)?;
    // What was opened is what counts.
    let opened = file.metadata().map_err(ReadError::Io)?;
    check_kind(&opened)?;
    Ok((file, opened))
}

/// The regular file at `path`, opened for reading as [`read`] reads it: refused
/// as it would be (world-writable, claiming more than `limit` bytes).
pub(crate) fn open_checked(path: &Path, limit: u64) -> Result<(File, Metadata), ReadError> {
    let (file, opened) = open_regular(path)?;
    check(&opened, limit)?;
    Ok((file, opened))
}

/// The text of the regular file at `path`, at most `limit` bytes.
pub(crate) fn read(path: &Path, limit: u64) -> Result<String, ReadError> {
    let (file, opened) = open_checked(path, limit)?;
    let mut bytes = Vec::new();
    // The claimed size, checked against the limit just above, plus one byte to see
    // the end; try_reserve: a policy error, never an abort.
    let expected = usize::try_from(opened.len()).unwrap_or(usize::MAX);
    bytes
        .try_reserve_exact(expected.saturating_add(1))
        .map_err(|e| ReadError::Io(std::io::Error::other(e)))?;
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { size: None, limit });
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        ReadError::NotText {
            line: good.iter().filter(|&&b| b == b'\n').count() + 1,
            column: good.len() - line_start + 1,
        }
    })
}

fn check(meta: &Metadata, limit: u64) -> Result<(), ReadError> {
    check_kind(meta)?;
    if meta.mode() & 0o002 != 0 {
        return Err(ReadError::WorldWritable(meta.mode()));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: Some(meta.len()),
            limit,
        });
    }
    Ok(())
}

/// A regular file, or [`ReadError::NotRegular`] saying what it is instead.
fn check_kind(meta: &Metadata) -> Result<(), ReadError> {
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(ReadError::NotRegular(if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO (named pipe)"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else {
            "something else"
        }));
    }
    Ok(())
}

const UNITS: [(&str, u64); 5] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

/// `max_size:` as written: a number of bytes, optionally with B, KiB, MiB, GiB or
/// TiB. `Err((message, hint))`.
pub(crate) fn parse_size(text: &str) -> Result<u64, (String, Option<String>)> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim_start();
    let hint = Some("e.g. 512MiB, 1GiB or a number of bytes (units: B, KiB, MiB, GiB, TiB)".into());
    let Some(&(_, scale)) = UNITS
        .iter()
        .find(|(name, _)| *name == unit || (unit.is_empty() && *name == "B"))
    else {
        return Err((format!("unknown size unit {unit:?} in {text:?}"), hint));
    };
    let Ok(number) = number.parse::<u64>() else {
        return Err((format!("{text:?} is not a size"), hint));
    };
    match number.checked_mul(scale) {
        Some(0) => Err(("max_size must be more than 0".into(), hint)),
        Some(size) => Ok(size),
        None => Err((format!("{text:?} is too large"), hint)),
    }
}

/// `300 MiB (314572800 bytes)`, or `512 bytes`.
fn size_text(bytes: u64) -> String {
    match UNITS
        .iter()
        .find(|(_, scale)| *scale > 1 && bytes >= *scale)
    {
        Some((unit, scale)) => {
            let whole = bytes / scale;
            let tenths = (bytes % scale) * 10 / scale;
            if bytes.is_multiple_of(*scale) {
                format!("{whole} {unit} ({bytes} bytes)")
            } else {
                format!("{whole}.{tenths} {unit} ({bytes} bytes)")
            }
        }
        None => format!("{bytes} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in [
            "",
            "MiB",
            "1MB",
            "1 mib",
            "0",
            "0KiB",
            "-1",
            "1.5GiB",
            "99999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(size_text(256 << 20), "256 MiB (268435456 bytes)");
        assert_eq!(size_text((1 << 20) + (1 << 19)), "1.5 MiB (1572864 bytes)");
        assert_eq!(size_text(1023), "1023 bytes");
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let cases: [(&Path, &str); 4] = [
            (&fifo, "a FIFO (named pipe)"),
            (Path::new("/dev/zero"), "a character device"),
            (Path::new("/dev/null"), "a character device"),
            (dir.path(), "a directory"),
        ];
        for (path, what) in cases {
            match read(path, DEFAULT_MAX_SIZE) {
                Err(ReadError::NotRegular(kind)) => assert_eq!(kind, what, "{path:?}"),
                other => panic!("{path:?}: {other:?}"),
            }
        }
        // A symlink to a regular file is followed; one to a FIFO is refused.
        let file = dir.path().join("list.txt");
        std::fs::write(&file, "192.0.2.0/24\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read(&link, 100).unwrap(), "192.0.2.0/24\n");
        let fifo_link = dir.path().join("fifo-link");
        std::os::unix::fs::symlink(&fifo, &fifo_link).unwrap();
        assert!(matches!(
            read(&fifo_link, 100),
            Err(ReadError::NotRegular(_))
        ));
        // World-writable: refused.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            read(&file, 100),
            Err(ReadError::WorldWritable(0o100666))
        ));
    }

    #[test]
    fn the_limit_holds_while_reading() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("list.txt");
        std::fs::write(&file, "192.0.2.0/24\n").unwrap();
        assert!(read(&file, 13).is_ok());
        assert!(matches!(
            read(&file, 12),
            Err(ReadError::TooLarge {
                size: Some(13),
                limit: 12
            })
        ));
        // procfs files say they hold 0 bytes: only the read finds out.
        assert!(std::fs::metadata("/proc/self/mountinfo").unwrap().len() == 0);
        assert!(matches!(
            read(Path::new("/proc/self/mountinfo"), 16),
            Err(ReadError::TooLarge {
                size: None,
                limit: 16
            })
        ));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_placed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("list.txt");
        std::fs::write(&file, b"192.0.2.0/24\n10.\xff\xfe\n").unwrap();
        match read(&file, 100) {
            Err(ReadError::NotText { line, column }) => assert_eq!((line, column), (2, 4)),
            other => panic!("{other:?}"),
        }
    }
}
