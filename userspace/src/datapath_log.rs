//! The XDP program's debug and trace lines (aya-log, `--datapath-log LEVEL`): read
//! from the filter's log ring and handed to `tracing` (the agent's log, and from
//! there to `airlock watch` sessions on its samples socket) or to whoever asks
//! (`airlock watch` without an agent). The level is fixed when the program is
//! loaded; see `loader::set_datapath_log`.
//!
//! aya-log finds a pinned program's ring by the program's id, which takes
//! CAP_SYS_ADMIN (the systemd unit does not grant it): without it the lines cannot
//! be read, and the caller says so.

use std::path::Path;
use std::sync::Arc;

use aya_log::EbpfLogger;
use serde::{Deserialize, Serialize};

/// Where the lines of one interface's program go.
pub type Logger<T> = EbpfLogger<T>;

#[derive(Debug, thiserror::Error)]
pub enum DatapathLogError {
    #[error("reading the pinned program in {dir}: {source}")]
    Program { dir: String, source: std::io::Error },
    #[error(
        "opening the datapath log of program {id} (needs CAP_SYS_ADMIN; a filter loaded before aya-log has none): {source}"
    )]
    Open { id: u32, source: aya_log::Error },
}

/// Opens the log ring of the filter pinned in `dir`, its lines going to `logger`.
pub fn open<T: log::Log>(dir: &Path, logger: T) -> Result<Logger<T>, DatapathLogError> {
    let id = crate::loader::pinned_program_id(dir).map_err(|source| DatapathLogError::Program {
        dir: dir.display().to_string(),
        source,
    })?;
    EbpfLogger::init_from_id_with_logger(id, logger)
        .map_err(|source| DatapathLogError::Open { id, source })
}

/// One line as the agent passes it to `airlock watch` (one JSON object a line,
/// beside the drop records; `datapath` tells it apart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathLine {
    pub interface: String,
    /// `ERROR` ... `TRACE`.
    pub level: String,
    /// The line itself.
    pub datapath: String,
}

/// Hands each line to `tracing` (target `airlock::datapath`), with its interface,
/// and to the `watch` sessions connected to `feed`, if any.
pub struct ToTracing {
    pub iface: String,
    pub feed: Option<tokio::sync::broadcast::Sender<Arc<str>>>,
}

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let iface = self.iface.as_str();
        let message = record.args();
        // Only while a `watch` is connected (sending to none is an error).
        if let Some(feed) = self.feed.as_ref().filter(|feed| feed.receiver_count() > 0) {
            let line = DatapathLine {
                interface: iface.to_owned(),
                level: record.level().to_string(),
                datapath: message.to_string(),
            };
            if let Ok(line) = serde_json::to_string(&line) {
                let _ = feed.send(line.into());
            }
        }
        match record.level() {
            log::Level::Error => {
                tracing::error!(target: "airlock::datapath", interface = iface, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "airlock::datapath", interface = iface, "{message}")
            }
            log::Level::Info => {
                tracing::info!(target: "airlock::datapath", interface = iface, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "airlock::datapath", interface = iface, "{message}")
            }
            log::Level::Trace => {
                tracing::trace!(target: "airlock::datapath", interface = iface, "{message}")
            }
        }
    }

    fn flush(&self) {}
}

/// Forwards the lines of `logger` as they come, until the task is dropped.
pub async fn forward<T: log::Log>(iface: &str, logger: Logger<T>) {
    // SAFETY: the logger owns its ring buffer's descriptor, which stays open and
    // unchanged until the AsyncFd (which owns the logger) is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = match registered {
        Ok(logger) => logger,
        Err(error) => {
            tracing::warn!(iface, %error, "cannot poll the datapath log");
            return;
        }
    };
    loop {
        let Ok(mut ready) = logger.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}
