//! A snapshot: one provider document exactly as downloaded, with where and when it
//! came from, the provider's version stamp and its SHA-256. The document is kept
//! verbatim (as a JSON string) so the digest can be checked on every read: a
//! snapshot edited or cut short since the fetch is refused, not enforced.

use std::{io::Write as _, path::Path};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{Provider, RangesError, providers};

/// The snapshot format's version.
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Always [`FORMAT`]: tells a snapshot from a raw provider document.
    pub airlock_ranges_snapshot: u32,
    pub provider: Provider,
    pub url: String,
    /// RFC 3339, UTC.
    pub fetched_at: String,
    /// The provider's own stamp (syncToken, changeNumber, etag), or the HTTP ETag
    /// when the document has none.
    pub version: Option<String>,
    /// Hex SHA-256 of `document`'s bytes.
    pub sha256: String,
    pub document: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Snapshot {
    /// A snapshot of `document`, checked: it must be a well-formed list of
    /// `provider`'s. `etag` stands in for a version stamp the document lacks.
    pub fn new(
        provider: Provider,
        url: &str,
        document: String,
        etag: Option<String>,
        fetched_at: std::time::SystemTime,
    ) -> Result<(Self, providers::Parsed), RangesError> {
        let parsed = providers::parse(provider, &document)?;
        let snapshot = Snapshot {
            airlock_ranges_snapshot: FORMAT,
            provider,
            url: url.to_owned(),
            fetched_at: humantime::format_rfc3339_seconds(fetched_at).to_string(),
            version: parsed.version.clone().or(etag),
            sha256: sha256_hex(document.as_bytes()),
            document,
        };
        Ok((snapshot, parsed))
    }

    /// Reads a snapshot's text (`path` names it in errors): its format, digest and
    /// document are all checked.
    pub fn from_text(text: &str, path: &Path) -> Result<(Self, providers::Parsed), RangesError> {
        let err = |what: String| RangesError::Snapshot {
            path: path.display().to_string(),
            what,
        };
        let snapshot: Snapshot = serde_json::from_str(text).map_err(|e| {
            err(format!(
                "not an Airlock range snapshot ({e}); write one with `airlock ranges fetch`"
            ))
        })?;
        if snapshot.airlock_ranges_snapshot != FORMAT {
            return Err(err(format!(
                "snapshot format {} (this Airlock reads {FORMAT})",
                snapshot.airlock_ranges_snapshot
            )));
        }
        let digest = sha256_hex(snapshot.document.as_bytes());
        if digest != snapshot.sha256 {
            return Err(err(format!(
                "the document's SHA-256 is {digest}, the snapshot records {}: it changed after the fetch",
                snapshot.sha256
            )));
        }
        let parsed = providers::parse(snapshot.provider, &snapshot.document)
            .map_err(|e| err(e.to_string()))?;
        Ok((snapshot, parsed))
    }

    /// Reads and checks the snapshot at `path`.
    pub fn read(path: &Path) -> Result<(Self, providers::Parsed), RangesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RangesError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_text(&text, path)
    }

    /// Writes it to `path` whole or not at all: a temporary file in the same
    /// directory, synced, then renamed over (a reader, or an agent watching the
    /// file, never sees half a snapshot).
    pub fn write(&self, path: &Path) -> Result<(), RangesError> {
        write_text(path, &self.text())
    }

    /// The snapshot as written to a file.
    pub fn text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a snapshot serializes");
        text.push('\n');
        text
    }
}

/// Writes `text` to `path` whole or not at all (see [`Snapshot::write`]).
pub fn write_text(path: &Path, text: &str) -> Result<(), RangesError> {
    let io = |source| RangesError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    temp.write_all(text.as_bytes()).map_err(io)?;
    temp.as_file().sync_all().map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    temp.persist(path).map_err(|e| io(e.error))?;
    // The rename itself survives a power cut only once the directory is synced.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}
